"""CLMEEval data: edit cases from real code.

- `schema`: EditCase / Neighbour and JSONL I/O (what every other room speaks).
- `sources`: raw-corpus readers (CoNaLa, CodeSearchNet, mined Python files).
- `build`: the pipeline (`build_dataset`, `default_dataset`); `neighbours`, `rewrite`, `rename`,
  `judge` and `llm` are its steps and backends; `stats`: Table III / Table II.
- `clmeeval`: reader of the released CLMEEval JSON.

Submodules are imported on use so that `import clmedit.data` stays light.
"""
