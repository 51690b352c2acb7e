"""Training one GRACE value: the replacement outputs that make the edited model decode the target."""

from __future__ import annotations

import torch
from torch import nn

from clmedit.editors.grace.hparams import GraceHParams
from clmedit.models.hooks import Trace
from clmedit.models.partial import forward_from, trainable_only
from clmedit.models.text import target_decodes, target_nll


def train_value(model, layer: int, path: str, hidden, batch: dict, init: torch.Tensor, hp: GraceHParams):
    """min_V NLL(target | out[P-1+k] := v_k) by Adam; runs only layers >= `layer` per step.

    With `stop_when_decoded`, optimisation ends at the first step (from `min_steps` on) whose value
    already makes the target the teacher-forced argmax (greedy decoding gives it); further steps
    sharpen it, which matters where the value must also carry to other inputs (A-GRACE, SCOPE).
    Returns (V (S, d_out) float32, final loss, steps taken). The model's parameters are not modified.
    """
    p = batch["prompt_lens"][0]
    value = nn.Parameter(init.detach().clone().float())
    positions = torch.arange(p - 1, p - 1 + value.shape[0], device=value.device)
    keep = batch["input_ids"].shape[1] - p + 1  # logits of positions P-1.. predict the target
    labels = batch["labels"][:, -keep:]

    def put(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[0, positions] = value.to(out.dtype)
        return out

    opt = torch.optim.Adam([value], lr=hp.edit_lr)
    loss = torch.tensor(float("nan"))
    steps = 0
    with trainable_only(model, []), Trace(model, path, edit_output=put, retain_output=False):
        while steps < hp.n_iter:
            logits = forward_from(model, layer, hidden, batch["attention_mask"], logits_to_keep=keep)
            loss = target_nll(logits, labels)
            if hp.stop_when_decoded and steps >= hp.min_steps and target_decodes(logits, labels):
                break  # the value as it is gives these logits: keep it untouched
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    return value.detach(), loss.item(), steps
