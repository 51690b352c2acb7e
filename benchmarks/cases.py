"""Edit cases for the cost benchmarks: a case file, else real CoNaLa pairs, else the default CNLE data.

Cost depends on sequence lengths, so the benchmarks prefer real CoNaLa intents and snippets
(read with the package's own CoNaLa reader) when the file is present.
"""

from __future__ import annotations

from pathlib import Path

from clmedit.data.schema import EditCase, Neighbour, format_prompt, read_cases
from clmedit.data.sources.conala import read_conala
from clmedit.run.prepare import resolve_data

# the project keeps real data in ../shared beside the repository (never committed); --conala overrides it
CONALA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conala" / "conala-train.json"


def benchmark_cases(n: int, data: str | None = None, conala: str | Path = CONALA) -> list[EditCase]:
    """n CNLE cases; CoNaLa cases take the next 5 intents as neighbours (snippets <= 120 chars)."""
    if data:
        return read_cases(resolve_data(data))[:n]
    if not Path(conala).is_file():
        return read_cases(resolve_data("default:cnle"))[:n]
    rows = [r for r in read_conala(conala) if len(r.output) <= 120][: n + 5]
    neighbours = [Neighbour(prompt=format_prompt("cnle", r.input)) for r in rows[n:]]
    return [
        EditCase(
            case_id=f"conala-{i}",
            task="cnle",
            prompt=format_prompt("cnle", r.input),
            target=r.output,
            rephrase=format_prompt("cnle", r.human_rephrase or r.input),
            neighbours=neighbours,
        )
        for i, r in enumerate(rows[:n])
    ]
