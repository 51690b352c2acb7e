"""The cost meter reports an edit's own memory (above what the process already held) and the resident peak."""

from __future__ import annotations

import torch

from clmedit.models.cost import CostMeter


def test_own_peak_excludes_what_the_process_already_held():
    held = torch.ones(64 * 1024 * 1024)  # 256 MiB held before the block, like a loaded model
    held += 1
    with CostMeter() as idle:
        torch.zeros(10)
    with CostMeter() as busy:
        x = torch.ones(32 * 1024 * 1024)  # 128 MiB allocated inside the block
        x += 1
    assert idle.peak_bytes < 32 * 1024 * 1024  # the unedited row: about 0, not the model's size
    assert idle.resident_peak_bytes >= 256 * 1024 * 1024  # the resident figure still holds the model
    assert busy.peak_bytes >= 128 * 1024 * 1024
    assert busy.resident_peak_bytes >= busy.peak_bytes + 256 * 1024 * 1024 * 0.9
    del held, x


_GROWING_PRODUCTS = """
import os, sys
{first}
import torch
from clmedit.models.cost import resident_bytes
torch.set_num_threads(1)
w = torch.randn(576, 1536, requires_grad=True)
def step(t):
    x = torch.randn(t, 576, requires_grad=True)
    (x @ w).sum().backward()
step(8)
before = resident_bytes()
for t in (64, 128, 256, 512, 1024):  # each a larger product than any before, as edits of longer cases are
    step(t)
print(resident_bytes() - before)
"""


def test_importing_clmedit_first_keeps_gemm_buffers_from_accumulating():
    """A long-lived editing process must not keep buffers sized to every larger product it has seen
    (MKL's fast memory manager does: ~6 MB here); importing clmedit before torch turns that off."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MKL_DISABLE_FAST_MM"}

    def growth(first: str) -> int:
        code = _GROWING_PRODUCTS.format(first=first)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert growth("import clmedit") < 2e6
    if not torch.backends.mkl.is_available():
        return
    assert growth("pass") > 3e6  # the effect this guards against is real on this build
