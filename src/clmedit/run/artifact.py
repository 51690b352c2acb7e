"""Practical editing: apply a list of fixes, save them as a small artifact, load it later.

An artifact directory holds
    manifest.json        format, base model id and fingerprint, editor, hparams, wrapped modules, and
                         every tensor of every tensor file (name -> shape, dtype, sha256)
    fixes.jsonl          the fixes as edit cases (so the edit can be replayed); its sha256 in the manifest
    weights.safetensors  the new value of every parameter the edit changed (only those)
    modules.safetensors  the own state of every module the editor wrapped in (e.g. GRACE's codebook)

An artifact is untrusted input. Loading refuses (IntegrityError) before changing the model when the
manifest has no base fingerprint or another model's, when a file holds a tensor the manifest does not
declare, or one whose shape, dtype or hash differs, and when a tensor would set anything the editor
does not edit: parameters only of the down projections of the editor's layers, module state only of
the wrappers the replayed edit creates. Wrapping editors' wrapper classes cannot be rebuilt
generically, so their fixes are replayed with the same editor and hparams and the saved wrapper
state is loaded over the replayed wrappers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from clmedit.data.schema import EditCase, SkippedLines, format_prompt, iter_jsonl, write_cases
from clmedit.errors import InputError, IntegrityError, describe_validation
from clmedit.files import atomic_write_text
from clmedit.models.arch import arch_of
from clmedit.models.fingerprint import model_fingerprint
from clmedit.run.records import fingerprint, fingerprint_diff

log = logging.getLogger(__name__)
FORMAT = 2  # 2: every tensor declared with its hash, base model fingerprint (1 had neither)
FILES = ("weights.safetensors", "modules.safetensors")


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


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (any dtype)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _declare(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "sha256": tensor_sha256(v)}
        for k, v in sorted(tensors.items())
    }


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifact(model, tok, editor, fixes: list[EditCase], out: str | Path, model_id: str) -> Path:
    """Apply `fixes` with `editor` (one apply call) and save what changed; the model stays edited."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = model_fingerprint(model, tok)
    before = fingerprint(model)
    original = {p.data_ptr() for p in model.parameters()}  # wrappers keep the original layer: skip it
    result = editor.apply(model, tok, fixes)
    params, modules = _touched(model, before)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    weights = {k: state[k].detach().cpu().contiguous() for k in params}
    wrapped: dict[str, torch.Tensor] = {}
    for m in modules:
        for k, v in model.get_submodule(m).state_dict().items():
            if v.data_ptr() in original:
                continue
            wrapped[f"{m}::{k}"] = v.detach().cpu().contiguous()
    save_file(weights, str(out / "weights.safetensors"))
    save_file(wrapped, str(out / "modules.safetensors"))
    write_cases(out / "fixes.jsonl", fixes)
    manifest: dict[str, Any] = {
        "format": FORMAT, "model": model_id, "base_fingerprint": base, "editor": editor.name,
        "hparams": editor.hparams.model_dump(mode="json"),
        "wrapped_modules": {m: type(model.get_submodule(m)).__qualname__ for m in modules},
        "fixes": len(fixes), "fixes_sha256": _file_sha256(out / "fixes.jsonl"),
        "tensors": {"weights.safetensors": _declare(weights), "modules.safetensors": _declare(wrapped)},
        "apply_seconds": result.seconds, "peak_bytes": result.peak_bytes,
    }  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    log.info("saved %d parameters and %d wrapped modules to %s", len(params), len(modules), out)
    return out


def _read_manifest(directory: Path) -> dict[str, Any]:
    mpath = directory / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{directory} is not a clmedit artifact (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{mpath} is not valid JSON ({err}); re-create the artifact") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise IntegrityError(
            f"{directory}: artifact format {got!r} is not supported (this clmedit reads format {FORMAT}); "
            f"re-create it with `clmedit apply --fixes {directory / 'fixes.jsonl'} --out DIR`"
        )
    if not isinstance(manifest.get("base_fingerprint"), str):
        raise IntegrityError(f"{directory}: the manifest has no base model fingerprint; refusing to load it")
    if not isinstance(manifest.get("tensors"), dict) or not all(
        isinstance(manifest["tensors"].get(f), dict) for f in FILES
    ):
        raise IntegrityError(f"{directory}: the manifest does not declare the tensors of {', '.join(FILES)}")
    return manifest


def _read_declared(directory: Path, file: str, declared: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of `file`, each checked against its declaration (name, shape, dtype, sha256)."""
    path = directory / file
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            extra, missing = sorted(names - set(declared)), sorted(set(declared) - names)
            if extra or missing:
                raise IntegrityError(
                    f"{path}: tensors not declared in the manifest {extra[:5]}, declared but absent "
                    f"{missing[:5]}; refusing to load this artifact"
                )
            tensors = {k: fh.get_tensor(k) for k in sorted(names)}
    except IntegrityError:
        raise
    except Exception as err:  # missing or unreadable file
        raise IntegrityError(f"{path} cannot be read as safetensors ({err}); re-create the artifact") from err
    for k, v in tensors.items():
        if _declare({k: v})[k] != declared[k]:
            raise IntegrityError(
                f"{path}: tensor {k!r} does not match its declaration in the manifest (shape, dtype or "
                f"sha256 differ); the artifact was altered or damaged"
            )
    return tensors


def _editable(model, manifest: dict[str, Any]) -> set[str]:
    """Parameters the manifest's editor may change: those of the down projections of its layers."""
    from clmedit.editors.base import editor_class

    arch = arch_of(model)
    n = arch.num_layers(model)
    try:
        cls = editor_class(manifest["editor"])
        hp = cls.HParams(**manifest["hparams"])
    except Exception as err:
        raise IntegrityError(f"artifact editor/hparams are not valid here: {err}") from err
    if hasattr(hp, "layers"):
        layers = hp.layers_for(hp.layers, n)
    elif hasattr(hp, "layer"):
        layers = [hp.layer_for(hp.layer, n)]
    else:
        layers = list(range(n))
    out = set()
    for layer in layers:
        path = arch.path("down_proj", layer)
        out |= {f"{path}.{k}" for k, _ in model.get_submodule(path).named_parameters()}
    return out


def load_artifact(model, tok, directory: str | Path) -> dict[str, Any]:
    """Put a saved edit into `model` (the unedited model it was made for); returns the manifest.

    Everything is checked before the model changes, except the wrapper state, which is checked
    against the wrappers the replay creates (on refusal the replayed wrappers are removed).
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    here = model_fingerprint(model, tok)
    if manifest["base_fingerprint"] != here:
        raise IntegrityError(
            f"{directory} was made for another base model ({manifest.get('model')!r}, fingerprint "
            f"{manifest['base_fingerprint']}) than the one loaded (fingerprint {here}); load it with "
            f"the model it was made for"
        )
    weights = _read_declared(directory, FILES[0], manifest["tensors"][FILES[0]])
    wrapped = _read_declared(directory, FILES[1], manifest["tensors"][FILES[1]])
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    editable = _editable(model, manifest)
    for k, v in weights.items():
        if k not in editable:
            raise IntegrityError(
                f"{directory}: the artifact would set {k!r}, which editor {manifest['editor']!r} does not "
                f"edit; refusing to load it"
            )
        if state[k].shape != v.shape:
            raise IntegrityError(f"{directory}: parameter {k} does not fit this model")
    fixes = directory / "fixes.jsonl"
    if manifest["wrapped_modules"] or wrapped:
        if not fixes.is_file() or _file_sha256(fixes) != manifest.get("fixes_sha256"):
            raise IntegrityError(f"{fixes} is missing or does not match the manifest's sha256")
        _load_wrappers(model, tok, manifest, wrapped, fixes, directory)
    with torch.no_grad():
        for k, v in weights.items():
            state[k].copy_(v.to(state[k].device, state[k].dtype))
    return manifest


def _load_wrappers(
    model, tok, manifest, wrapped: dict[str, torch.Tensor], fixes: Path, directory: Path
) -> None:
    """Replay the fixes to rebuild the wrappers, then load their saved own state (and nothing else)."""
    from clmedit.data.schema import read_cases
    from clmedit.editors.base import editor_class

    cls = editor_class(manifest["editor"])
    editor = cls(cls.HParams(**manifest["hparams"]))
    before = fingerprint(model)
    original = {p.data_ptr() for p in model.parameters()}
    result = editor.apply(model, tok, read_cases(fixes))  # rebuilds the wrappers
    try:
        _, modules = _touched(model, before)
        own = {
            f"{m}::{k}": v
            for m in modules
            for k, v in model.get_submodule(m).state_dict().items()
            if v.data_ptr() not in original
        }
        if sorted(modules) != sorted(manifest["wrapped_modules"]):
            raise IntegrityError(
                f"{directory}: the manifest lists wrapped modules {sorted(manifest['wrapped_modules'])} but "
                f"replaying its fixes wraps {modules}; refusing to load it"
            )
        for key, v in wrapped.items():
            if key not in own:
                raise IntegrityError(
                    f"{directory}: modules.safetensors would set {key!r}, which is not state of a module "
                    f"the editor wrapped; refusing to load it"
                )
            if own[key].shape != v.shape:
                raise IntegrityError(f"{directory}: {key} does not fit the replayed wrapper")
        per_module: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in wrapped.items():
            m, _, k = key.partition("::")
            per_module.setdefault(m, {})[k] = v
        for m, sd in per_module.items():
            model.get_submodule(m).load_state_dict(sd, strict=False)
    except BaseException:
        result.restore()
        raise
