"""Practical editing: apply a list of fixes, save them as a small artifact, load it later.

An artifact directory holds
    manifest.json        editor, hparams, model, the touched parameter names, the wrapped modules
    fixes.jsonl          the fixes as edit cases (so the edit can be replayed)
    weights.safetensors  the new value of every parameter the edit changed (only those)
    modules.safetensors  state_dict of every module the editor wrapped in (e.g. GRACE's codebook layer)

Touched parameters are found by hashing every parameter before and after the edit (no weight copy).
Loading writes the saved parameters back; for wrapping editors, whose wrapper class we cannot rebuild
generically, the fixes are replayed with the same editor and hparams and the saved wrapper state is
loaded over the replayed wrappers, so the result is the saved edit (checked by hash).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from clmedit.data.schema import (
    EditCase,
    SkippedLines,
    atomic_write_text,
    format_prompt,
    iter_jsonl,
    write_cases,
)
from clmedit.errors import InputError, describe_validation
from clmedit.run.records import fingerprint, fingerprint_diff

log = logging.getLogger(__name__)
FORMAT = 1


def read_fixes(path: str | Path, task: str = "cnle") -> list[EditCase]:
    """Fixes from JSONL: full EditCase lines, or {prompt|intent|code, target} lines.

    `intent` is formatted as a CNLE prompt, `code` as a CSNE prompt, `prompt` with `task`'s
    template unless it is already formatted.
    """
    fixes = []
    skipped = SkippedLines()
    for i, obj in enumerate(iter_jsonl(path, skipped)):
        try:
            fixes.append(_fix(obj, i, task))
        except ValidationError as err:
            raise InputError(
                f"{path}: fix {i + 1} is not a valid edit case ({describe_validation(err)})"
            ) from None
        except InputError as err:
            raise InputError(f"{path}: fix {i + 1} {err}") from None
    if skipped:
        where = ", ".join(f"line {n}: {r}" for n, r in skipped.lines[:5])
        raise InputError(f"{path}: {sum(skipped.values())} line(s) are not JSON objects ({where}); fix them")
    if not fixes:
        raise InputError(f"{path}: no fixes found")
    return fixes


def _fix(obj: dict[str, Any], i: int, task: str) -> EditCase:
    if "neighbours" in obj and "case_id" in obj:
        return EditCase.model_validate(obj)
    key = next((k for k in ("intent", "code", "prompt") if k in obj), None)
    if key is None:
        raise InputError("needs one of 'prompt', 'intent' or 'code', and a 'target'")
    text, target = obj[key], obj.get("target")
    for name, value in ((key, text), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"needs a non-empty string {name!r}, got {value!r}")
    t = {"intent": "cnle", "code": "csne"}.get(key, task)
    prompt = as_prompt(text, task) if key == "prompt" else format_prompt(t, text)  # type: ignore[arg-type]
    return EditCase(case_id=str(obj.get("id", f"fix-{i}")), task=t, prompt=prompt, target=target,
                    rephrase=prompt, neighbours=[])  # fmt: skip


def as_prompt(text: str, task: str = "cnle") -> str:
    """`text` formatted with the task template unless it already is (ends with 'Code:'/'Description:')."""
    if text.rstrip().endswith(("Code:", "Description:")):
        return text
    return format_prompt(task, text)  # type: ignore[arg-type]


def _touched(model: torch.nn.Module, before: dict[str, str]) -> tuple[list[str], list[str]]:
    """(parameters/buffers changed in place, paths of modules replaced) since the `before` fingerprint.

    A wrapped module renames the tensors below it; those names (present before or after only) are
    structural and are carried by the wrapper's state, not by the parameter list.
    """
    after = fingerprint(model)
    changed = fingerprint_diff(before, after)
    modules = sorted(k.removeprefix("module:") for k in changed if k.startswith("module:") and k in before)
    tensors = [k for k in changed if not k.startswith("module:") and k in before and k in after]
    return tensors, modules


def save_artifact(model, tok, editor, fixes: list[EditCase], out: str | Path, model_id: str) -> Path:
    """Apply `fixes` with `editor` (one apply call) and save what changed; the model stays edited."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = fingerprint(model)
    original = {p.data_ptr() for p in model.parameters()}  # wrappers keep the original layer: skip it
    result = editor.apply(model, tok, fixes)
    params, modules = _touched(model, before)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    save_file({k: state[k].detach().cpu().contiguous() for k in params}, str(out / "weights.safetensors"))
    wrapped: dict[str, torch.Tensor] = {}
    for m in modules:
        for k, v in model.get_submodule(m).state_dict().items():
            if v.data_ptr() in original:
                continue
            wrapped[f"{m}::{k}"] = v.detach().cpu().contiguous()
    save_file(wrapped, str(out / "modules.safetensors"))
    write_cases(out / "fixes.jsonl", fixes)
    manifest: dict[str, Any] = {
        "format": FORMAT, "model": model_id, "editor": editor.name,
        "hparams": editor.hparams.model_dump(mode="json"), "params": params,
        "wrapped_modules": {m: type(model.get_submodule(m)).__qualname__ for m in modules},
        "fixes": len(fixes), "apply_seconds": result.seconds, "peak_bytes": result.peak_bytes,
        "fingerprint": {k: v for k, v in fingerprint(model).items() if k in params},
    }  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    log.info("saved %d parameters and %d wrapped modules to %s", len(params), len(modules), out)
    return out


def load_artifact(model, tok, directory: str | Path) -> dict[str, Any]:
    """Put a saved edit into `model` (the unedited model it was made for); returns the manifest."""
    directory = Path(directory)
    mpath = directory / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{directory} is not a clmedit artifact (no manifest.json)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory}: artifact format {manifest.get('format')} is not supported ({FORMAT})")
    if manifest["wrapped_modules"]:
        from clmedit.data.schema import read_cases
        from clmedit.editors.base import editor_class

        cls = editor_class(manifest["editor"])
        editor = cls(cls.HParams(**manifest["hparams"]))
        editor.apply(model, tok, read_cases(directory / "fixes.jsonl"))  # rebuilds the wrappers
        saved: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in load_file(str(directory / "modules.safetensors")).items():
            m, _, k = key.partition("::")
            saved.setdefault(m, {})[k] = v
        for m, sd in saved.items():
            model.get_submodule(m).load_state_dict(sd, strict=False)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for k, v in load_file(str(directory / "weights.safetensors")).items():
            if k not in state or state[k].shape != v.shape:
                raise ValueError(f"{directory}: parameter {k} does not fit this model; was it made for it?")
            state[k].copy_(v.to(state[k].device, state[k].dtype))
    now = fingerprint(model)
    bad = [k for k, h in manifest.get("fingerprint", {}).items() if now.get(k) != h]
    if bad:
        raise ValueError(f"{directory}: loaded parameters differ from the saved edit: {bad[:5]}")
    return manifest
