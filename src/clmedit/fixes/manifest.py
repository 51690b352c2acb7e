"""A fix file's manifest and tensors, read and checked: what `load_edited` trusts, and nothing more.

The manifest (format 3) declares every tensor of edit.safetensors (name -> shape, dtype, sha256) and
the fields loading reads; a part that is not a regular file inside the folder, a field of the wrong
type, a tensor the manifest does not declare or one that differs from its declaration, or NaN/Inf
values are an IntegrityError before any tensor reaches a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from clmedit.errors import InputError, IntegrityError
from clmedit.files import regular_file

FORMAT = 3  # 3: the edit's own state, loaded without training; 2 replayed the fixes; 1 had no hashes
EDIT_FILE, MANIFEST = "edit.safetensors", "manifest.json"
FIX_FILES = (EDIT_FILE, MANIFEST, "fixes.jsonl")  # what `save_artifact` writes into its folder
# safetensors' header names of the dtypes an edit holds -> torch's names (as the manifest declares them)
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip


def is_fix_file(directory: str | Path) -> bool:
    """True when `directory` holds a manifest clmedit wrote (so `apply --out` may replace it)."""
    try:
        return "format" in json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def finite(t: torch.Tensor) -> bool:
    """No NaN anywhere, no Inf in a tensor of values (a scalar +inf is a threshold's "none yet", WISE's)."""
    if not t.is_floating_point():
        return True
    return not bool(torch.isnan(t).any()) and (t.dim() == 0 and bool(t > 0) or bool(torch.isfinite(t).all()))


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (any dtype)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def declare(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "sha256": tensor_sha256(v)}
        for k, v in sorted(tensors.items())
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a fix file (or of an exported adapter), checked for format and completeness."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"{directory} is not a clmedit fix file (no {MANIFEST})")
    try:
        manifest = json.loads(_part(mpath, directory).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{mpath} is not valid JSON ({err}); re-create the fix file") from err
    got = manifest.get("format") if isinstance(manifest, dict) else None
    if got != FORMAT:
        editor = manifest.get("editor", "EDITOR") if isinstance(manifest, dict) else "EDITOR"
        raise IntegrityError(
            f"{directory}: fix file format {got!r} is not supported (this clmedit reads format {FORMAT}, "
            f"which loads without training); re-create it with `clmedit apply --editor {editor} --fixes "
            f"{directory / 'fixes.jsonl'} --out NEW_DIR` (add --trained DIR for a trained editor)"
        )
    if not isinstance(manifest.get("base_fingerprint"), str):
        raise IntegrityError(f"{directory}: the manifest has no base model fingerprint; refusing to load it")
    edit = manifest.get("edit")
    if (
        not isinstance(edit, dict)
        or not isinstance(edit.get("tensors"), dict)
        or not isinstance(edit.get("meta"), dict)
    ):
        raise IntegrityError(f"{directory}: the manifest does not declare the edit's tensors and meta")
    _check_fields(directory, manifest)
    return manifest


def _part(path: Path, directory: Path) -> Path:
    """`path` if it is a regular file inside the fix file's folder (a FIFO would block, a device never end)."""
    try:
        return regular_file(path, "fix-file part", inside=directory)
    except InputError as err:
        raise IntegrityError(f"{err}; refusing to load this fix file") from None


def _check_fields(directory: Path, manifest: dict[str, Any]) -> None:
    """Every field loading reads has the type it must have, so a tampered value is named, not a crash."""
    expected = {"editor": str, "model": str, "hparams": dict, "fixes": int}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IntegrityError(
                f"{directory}: the manifest's {key!r} is {json.dumps(manifest.get(key))}, not {_KIND[kind]}; "
                "the fix file was altered or damaged; re-create it"
            )
    for name, decl in manifest["edit"]["tensors"].items():
        shape = decl.get("shape") if isinstance(decl, dict) else None
        ok = isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        if not ok or decl.get("dtype") not in _DTYPES.values() or not isinstance(decl.get("sha256"), str):
            raise IntegrityError(f"{directory}: the manifest's declaration of tensor {name!r} is malformed ({decl!r})")


_KIND = {str: "a string", dict: "an object", int: "an integer"}


def read_declared(path: Path, declared: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of `path`, each checked against its declaration (name, shape, dtype, sha256), the
    header's shapes and dtypes before any tensor is read, the values after (no NaN or Inf)."""
    _part(path, path.parent)
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            extra, missing = sorted(names - set(declared)), sorted(set(declared) - names)
            if extra or missing:
                raise IntegrityError(
                    f"{path}: tensors not declared in the manifest {extra[:5]}, declared but absent "
                    f"{missing[:5]}; refusing to load this fix file"
                )
            for k in sorted(names):
                head, want = fh.get_slice(k), declared[k]
                if list(head.get_shape()) != want["shape"] or _DTYPES.get(head.get_dtype()) != want["dtype"]:
                    raise IntegrityError(
                        f"{path}: tensor {k!r} is {head.get_dtype()} {head.get_shape()} in the file but declared "
                        f"{declared[k]['dtype']} {declared[k]['shape']}; the fix file was altered or damaged"
                    )
            tensors = {k: fh.get_tensor(k) for k in sorted(names)}
    except IntegrityError:
        raise
    except Exception as err:  # missing or unreadable file
        raise IntegrityError(f"{path} cannot be read as safetensors ({err}); re-create the fix file") from err
    for k, v in tensors.items():
        if declare({k: v})[k] != declared[k]:
            raise IntegrityError(
                f"{path}: tensor {k!r} does not match its declaration in the manifest (shape, dtype or "
                f"sha256 differ); the fix file was altered or damaged"
            )
        if not finite(v):
            raise IntegrityError(f"{path}: tensor {k!r} holds NaN or Inf values; refusing to load this fix file")
    return tensors
