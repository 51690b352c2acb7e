"""Export a fix file for use outside clmedit's CLI.

- Weight editors (FT-L, ROME, MEMIT, PMET, AlphaEdit, MALMEN: the edit changes parameters only):
  a standard Hugging Face checkpoint of the edited model and its tokenizer, which plain
  `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads with the fixes in it.
- Editors that wrap a module (GRACE, A-GRACE, SCOPE, WISE): the adapter files (the fix file's
  manifest and edit.safetensors) and a README; `clmedit.load_edited(model, DIR, tok=None)` puts
  them on any loaded copy of the base model (its fingerprint is checked).

Which one is decided by what loading the fix did to the model: a changed module tree means a
wrapper, hence adapter files. The files are written into a hidden folder beside `out`, renamed to
`out` once complete: a failed export leaves no folder behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clmedit.errors import InputError
from clmedit.files import atomic_write_text
from clmedit.fixes.artifact import load_edited
from clmedit.fixes.manifest import EDIT_FILE, MANIFEST, read_manifest
from clmedit.models.load import save_model
from clmedit.outputs import check_output_dir
from clmedit.report import escape
from clmedit.run.checks import check_device, check_out_dir
from clmedit.run.setup import load_model_for

log = logging.getLogger(__name__)
PROVENANCE = "clmedit_fix.json"  # beside an exported checkpoint: which fixes it holds

_ADAPTER_README = """# {editor} edit ({fixes} fix(es)) for {model}

These are clmedit adapter files: the {editor} edit ({meta}) of the base model `{model}`
(fingerprint `{fingerprint}`). They wrap a module, so they are not a plain checkpoint. Load them
onto the unedited base model, loaded any way you like:

```python
import clmedit
result = clmedit.load_edited(model, {folder}, tok=tok)   # tok optional; checks the base model
# ... generate with `model` as usual; result.restore() takes the edit out again
```
"""


def _tree(model) -> list[tuple[str, str]]:
    return [(n, type(m).__qualname__) for n, m in model.named_modules()]


def export_fix_file(load: Path, out: str | Path, model: str | None = None, device: str | None = None,
                    dtype: str = "auto") -> dict[str, Any]:  # fmt: skip
    """`clmedit export`: load `model` (default: the fix file's base model) and export the fix file
    `load` to the new or empty folder `out` (`export_fix`); everything is checked before the model loads."""
    if not (load / "manifest.json").is_file():
        raise InputError(
            f"--load {load} is not a clmedit fix file (no manifest.json); make one with `clmedit apply --out`"
        )
    out = check_output_dir(out, [load], ours=lambda p: False)  # an export goes to a new or empty folder
    manifest = read_manifest(load)
    check_device(device)
    check_out_dir(out.absolute().parent)  # the folder itself appears only when the export succeeded
    m, tok = load_model_for(model or manifest["model"], device, dtype)
    return export_fix(m, tok, load, out)


def export_fix(model, tok, fix_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Load the fix file `fix_dir` into the unedited `model` and export it to `out` (see the module doc).

    Returns {"kind": "checkpoint" | "adapter", "path": out, "editor": name}. The model is left
    edited. `out` must not exist or be empty.
    """
    fix_dir, out = Path(fix_dir), Path(out)
    before = _tree(model)
    result = load_edited(model, fix_dir, tok)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        kind = _write(model, tok, fix_dir, result.info["manifest"], staging, out, changed=_tree(model) != before)
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller); refuses, and keeps everything, if not
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported the %s edit of %s as %s files to %s", result.info["manifest"]["editor"], fix_dir, kind, out)
    return {"kind": kind, "path": str(out), "editor": result.info["manifest"]["editor"]}


def _write(model, tok, fix_dir: Path, manifest: dict[str, Any], into: Path, out: Path, changed: bool) -> str:
    """Write the export's files into `into` (to become `out`); returns its kind."""
    summary = {"editor": manifest["editor"], "fixes": manifest["fixes"], "model": manifest["model"]}
    if not changed:
        save_model(model, tok, into)
        provenance = {**summary, "base_fingerprint": manifest["base_fingerprint"], "fix_file": str(fix_dir)}
        atomic_write_text(into / PROVENANCE, json.dumps(provenance, indent=2))
        return "checkpoint"
    for name in (EDIT_FILE, MANIFEST):
        shutil.copyfile(fix_dir / name, into / name)
    meta = ", ".join(f"{k}={v}" for k, v in manifest["edit"]["meta"].items() if isinstance(v, (int, str)))
    text = {k: escape.markdown(v) for k, v in {**summary, "meta": meta or "no settings"}.items()}
    readme = _ADAPTER_README.format(  # the fix file's text is data: escaped; the folder a Python string
        **text, fingerprint=escape.markdown(manifest["base_fingerprint"]), folder=json.dumps(str(out))
    )
    atomic_write_text(into / "README.md", readme)
    return "adapter"
