"""Per-case training tensors of MALMEN kept off the accelerator, so meta-training's peak memory
does not grow with the number of training cases.

A 7B CNLE fold holds ~95 GB of (key, gradient) pairs and cached hidden states. `CaseStore`
keeps each case's tensors where `where` says and hands back only the cases of one batch, on
the model's device:

    "disk"   one safetensors file per (kind, case) in a temporary folder under the cache root
             (default: memory stays flat in the number of cases, host and device alike)
    "cpu"    host memory (grows with the cases on the host, not on the GPU)
    "device" the model's device (the fastest, for small models and few cases)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from clmedit.files import cache_root

Where = Literal["disk", "cpu", "device"]


class CaseStore:
    """put((kind, case index), {name: tensor}) once; get(...) -> the same tensors on `device`."""

    def __init__(self, where: Where, device: torch.device, directory: str | Path | None = None):
        if where not in ("disk", "cpu", "device"):
            raise ValueError(f"store must be 'disk', 'cpu' or 'device', not {where!r}")
        self.where, self.device = where, torch.device(device)
        self._held: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        if where == "disk":
            parent = Path(directory) if directory else cache_root() / "tmp"
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="malmen-", dir=parent)

    def _file(self, key: tuple[str, int]) -> str:
        return str(Path(self._tmp.name) / f"{key[0]}-{key[1]}.safetensors")

    def put(self, key: tuple[str, int], tensors: dict[str, torch.Tensor]) -> None:
        if self.where == "disk":
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, self._file(key))
        else:
            target = self.device if self.where == "device" else torch.device("cpu")
            self._held[key] = {k: v.detach().to(target, copy=True) for k, v in tensors.items()}  # no views

    def get(self, key: tuple[str, int]) -> dict[str, torch.Tensor]:
        if self.where == "disk":
            return {k: v.to(self.device) for k, v in load_file(self._file(key)).items()}
        return {k: v.to(self.device, non_blocking=True) for k, v in self._held[key].items()}

    def close(self) -> None:
        self._held.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
