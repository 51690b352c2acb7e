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
