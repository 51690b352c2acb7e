"""Target values: the hidden-state change at the edit token that makes the model say the target.

For each case i and each edit site s (a module whose output is a hidden vector: an MLP, an
attention block, a whole decoder block) we find a delta d_{s,i} added to that output at the
prompt's last token, minimising

    L(d) = w * mean_c NLL(target | c + prompt, d)        (c + prompt + " " + target, c in contexts)
         + kl_factor * KL( p_d(. | prompt) || p(. | prompt) )           at the edit token
         + weight_decay * sum_s ||d_s|| / ||h_s||^2

as the study's code writes it (its ROME/MEMIT/PMET `compute_v`/`compute_z`). The contexts are ""
(the prompt alone) and the context prefixes (locate.keys.with_contexts): the same d is added at
the edit token of every one of these texts, the texts whose averaged key the weight update is
then solved for. The KL term is read on the prompt itself (`kl_suffix` appends text, e.g. ROME's
original " is a") and keeps what the model says right after the edited representation from
drifting; h_s is the site's original output at the prompt's own edit token. After each Adam
step ||d_s|| is clamped to clamp_factor * ||h_s||. As in the study's code, a case stops once its
L(d) is below stop_loss, and at most steps - 1 Adam steps run (the last pass only reads the loss
of the deltas returned). w = nll_factor, except with `dynamic_nll` (PMET): once a case's every
target token is already the argmax, w drops to 0.1 * nll_factor for the next step, and the
case stops once kl_factor * KL <= 0.01 as well. The target value of a site is v_s = h_s + d_s.

The layers below the lowest site do not change, so their output is computed once and each step
runs only the upper stack (models.partial.UpperStack). Cases are independent (each delta only
touches its own case's rows), so a batch is optimised together with the per-case losses summed.
Invariant: the model's parameters (values and requires_grad flags) are unchanged on return.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from clmedit.locate.keys import with_contexts
from clmedit.models.arch import ArchAdapter, arch_of
from clmedit.models.hooks import Trace, TraceDict
from clmedit.models.partial import UpperStack, trainable_only
from clmedit.models.text import IGNORE, edit_rows, last_position, pad_batch, right_pad

log = logging.getLogger(__name__)

Site = tuple[str, int]  # (part, layer): part is "block" or an ArchAdapter part ("mlp", "attn", ...)


class ValueParams(BaseModel):
    """Settings of the target-value optimisation (ROME/MEMIT names in brackets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(25, ge=1, description="Adam steps [v_num_grad_steps]")
    lr: float = Field(0.5, gt=0, description="Adam learning rate [v_lr]")
    weight_decay: float = Field(1e-3, ge=0, description="penalty on ||d||^2/||h||^2 [v_weight_decay]")
    clamp_factor: float = Field(4.0, gt=0, description="||d|| <= clamp_factor * ||h|| [clamp_norm_factor]")
    kl_factor: float = Field(0.0625, ge=0, description="weight of the KL term [kl_factor]")
    kl_suffix: str = Field(
        "", description="appended to the prompt for the KL term ('': the prompt, as the study)"
    )
    nll_factor: float = Field(1.0, gt=0, description="weight of the target NLL [nll_loss_factor]")
    dynamic_nll: bool = Field(False, description="PMET: NLL weight 0.1x once the target is the argmax")
    stop_loss: float = Field(5e-2, ge=0, description="a case stops once its loss L(d) is below this")
    value_batch_size: int = Field(8, ge=1, description="cases whose values are optimised together")


def site_path(arch: ArchAdapter, site: Site) -> str:
    part, layer = site
    return f"{arch.layers}.{layer}" if part == "block" else arch.path(part, layer)


@dataclass
class Values:
    """Per site path: `init` h (N, d) and `delta` d (N, d), float32; `nll` per case after optimisation."""

    init: dict[str, torch.Tensor] = field(default_factory=dict)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)
    nll: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def target(self, path: str) -> torch.Tensor:
        return self.init[path] + self.delta[path]


def _batch(
    tok, prompts: list[str], targets: list[str], suffix: str, device, prefixes: list[str] = ()
) -> dict:
    """Rows 0..R-1: c + prompt + " " + target for each case and context c (labels on the target),
    R = N * (1 + P); rows R..R+N-1: prompt + kl_suffix. `case` maps every row to its case."""
    reps = len(prefixes) + 1
    texts = with_contexts(prompts, list(prefixes))
    rows, labels, plens = edit_rows(tok, texts, [t for t in targets for _ in range(reps)])
    suffix_ids = tok(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    alone = range(0, len(rows), reps)  # each case's row without a prefix
    kl_rows = [rows[i][: plens[i]] + suffix_ids for i in alone]
    batch = pad_batch(tok, rows + kl_rows, device)
    n = len(prompts)
    return {
        "ids": batch["input_ids"],
        "mask": batch["attention_mask"],
        "labels": right_pad(labels, IGNORE, width=batch["input_ids"].shape[1], device=device)[0],
        # the edit token of every row: its prompt's last token
        "lookup": torch.tensor(plens + [plens[i] for i in alone], device=device) - 1,
        "case": torch.cat([torch.arange(n).repeat_interleave(reps), torch.arange(n)]).to(device),
        "alone": torch.tensor(list(alone), device=device),
        "kl_last": last_position(batch["attention_mask"][len(rows) :]),
    }


def _kept_positions(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose logits the loss reads, per row (R + N, K), and the target ids they predict (R, K).

    Rewrite row i keeps the positions that predict its target tokens (from its edit token on);
    KL row i keeps its last position. Projecting only these onto the vocabulary (transformers'
    `logits_to_keep`) saves the unembedding of every prompt token, which dominates for long prompts.
    """
    labels = b["labels"]  # (R, T)
    r, width = labels.shape
    tlen = (labels != IGNORE).sum(1)  # (R,)
    k = int(tlen.max())
    offs = torch.arange(k, device=labels.device)
    pos = (b["lookup"][:r, None] + offs).clamp(max=width - 2)  # (R, K) predicts pos + 1
    tgt = labels.gather(1, pos + 1).masked_fill(offs >= tlen[:, None], IGNORE)
    kl_pos = b["kl_last"][:, None].expand(len(b["kl_last"]), k)
    return torch.cat([pos, kl_pos]), tgt


def _row_nll(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the target tokens per row: logits (N, K, V) at the kept positions, tgt (N, K) -> (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    keep = tgt != IGNORE
    tok_lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return -tok_lp.sum(1) / keep.sum(1).clamp(min=1)


def kl_and_decay(
    kl_log: torch.Tensor, kl_ref: torch.Tensor, deltas: list[torch.Tensor], init_norms: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per case (N,): KL(p_d || p_ref) from log-probabilities (N, V), and sum_s ||d_s|| / ||h_s||^2.

    Both as the study's code writes them (`kl_div(init, new, log_target=True)`, `||d|| / ||h||^2`).
    """
    kl = (kl_log.exp() * (kl_log - kl_ref)).sum(-1)
    decay = sum(d.norm(dim=-1) / h**2 for d, h in zip(deltas, init_norms))
    return kl, decay


def _target_is_argmax(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(N,) true where every target token of the row is the most likely token at its position."""
    keep = tgt != IGNORE
    return ((logits.argmax(-1) == tgt) | ~keep).all(1)


def optimize_values(
    model: nn.Module, tok, prompts: list[str], targets: list[str], sites: list[Site], hp: ValueParams,
    prefixes: list[str] = (),
) -> Values:  # fmt: skip
    """Find deltas d_s (one per case and site) minimising L(d) in the module docstring.

    `prefixes`: the contexts the NLL is averaged over besides the prompt alone (none: the prompt
    alone). Returns Values keyed by the sites' module paths. The model is unchanged.
    """
    arch = arch_of(model)
    paths = [site_path(arch, s) for s in sites]
    out = Values(init={p: [] for p in paths}, delta={p: [] for p in paths})
    for start in range(0, len(prompts), hp.value_batch_size):
        chunk = _optimize_chunk(
            model, tok, prompts[start : start + hp.value_batch_size], targets[start : start + hp.value_batch_size],
            sites, paths, hp, list(prefixes),
        )  # fmt: skip
        for p in paths:
            out.init[p].append(chunk.init[p])
            out.delta[p].append(chunk.delta[p])
        out.nll += chunk.nll
        out.steps += chunk.steps
    out.init = {p: torch.cat(v) for p, v in out.init.items()}
    out.delta = {p: torch.cat(v) for p, v in out.delta.items()}
    return out


def _add_delta(deltas: dict[str, torch.Tensor], path: str, rows: torch.Tensor, b: dict):
    """The edit_output hook of `path`: each row's output at its lookup position plus its case's delta."""

    def edit(output: torch.Tensor, _inp) -> torch.Tensor:
        if path not in deltas:
            return output
        d = deltas[path].to(output.dtype)[b["case"]]  # a case's delta at each of its rows
        return output.index_put((rows, b["lookup"]), d, accumulate=True)

    return edit


def _update(opt, deltas: dict[str, torch.Tensor], done: torch.Tensor, case_loss: torch.Tensor,
            init_norm: dict[str, torch.Tensor], clamp_factor: float) -> None:  # fmt: skip
    """One Adam step for the cases still running, then every delta clamped to clamp_factor x its
    output's norm; a stopped case keeps its delta (Adam's momentum would move it)."""
    kept = {p: d.detach()[done].clone() for p, d in deltas.items()}
    opt.zero_grad(set_to_none=True)
    case_loss[~done].sum().backward()
    opt.step()
    with torch.no_grad():
        for p, d in deltas.items():
            d[done] = kept[p]
            cap = (clamp_factor * init_norm[p]).unsqueeze(-1)
            norm = d.norm(dim=-1, keepdim=True)
            d.mul_(torch.where(norm > cap, cap / norm.clamp(min=1e-12), 1.0))


def _optimize_chunk(model, tok, prompts, targets, sites, paths, hp: ValueParams, prefixes) -> Values:
    device = next(model.parameters()).device
    n, reps = len(prompts), len(prefixes) + 1
    b = _batch(tok, prompts, targets, hp.kl_suffix, device, prefixes)
    r = n * reps  # rewrite rows; the N KL rows follow them
    rows = torch.arange(r + n, device=device)
    kl_rows = torch.arange(r, r + n, device=device)
    alone = b["alone"]
    deltas: dict[str, torch.Tensor] = {}
    keep, tgt = _kept_positions(b)

    with trainable_only(model):  # no weight gradients are built
        stack = UpperStack(model, min(layer for _, layer in sites), b["ids"], b["mask"])
        with torch.no_grad(), TraceDict(model, paths, retain_output=True, detach=True) as td:
            logits = stack(logits_to_keep=keep)  # (2N, K, V)
            init = {p: td[p].output[alone, b["lookup"][alone]].float() for p in paths}
            kl_ref = torch.log_softmax(logits[kl_rows, 0].float(), dim=-1)  # (N, V)
        init_norm = {p: init[p].norm(dim=-1) for p in paths}  # (N,)
        deltas.update({p: torch.zeros_like(init[p], requires_grad=True) for p in paths})
        opt = torch.optim.Adam(list(deltas.values()), lr=hp.lr)
        edits = {p: {"edit_output": _add_delta(deltas, p, rows, b)} for p in paths}
        nll = torch.full((n,), float("inf"))
        weight = torch.full((n,), hp.nll_factor, device=device)  # per-case NLL weight (dynamic_nll)
        done = torch.zeros(n, dtype=torch.bool, device=device)  # cases that stopped: deltas frozen
        steps_run = torch.zeros(n, dtype=torch.long)
        for step in range(hp.steps):
            traces = [Trace(model, p, retain_output=False, **edits[p]) for p in paths]
            try:
                logits = stack(logits_to_keep=keep)
            finally:
                for tr in traces:
                    tr.close()
            case_nll = _row_nll(logits[:r], tgt).view(n, reps).mean(1)  # per case, over its contexts
            kl_log = torch.log_softmax(logits[kl_rows, 0].float(), dim=-1)
            kl, decay = kl_and_decay(
                kl_log, kl_ref, [deltas[p] for p in paths], [init_norm[p] for p in paths]
            )
            case_loss = weight * case_nll + hp.kl_factor * kl + hp.weight_decay * decay
            log.debug("step %d: nll %s", step, case_nll.tolist())
            nll = torch.where(done, nll.to(device), case_nll.detach())  # a stopped case keeps its last
            done |= case_loss.detach() < hp.stop_loss
            if hp.dynamic_nll:
                argmax = _target_is_argmax(logits[:r], tgt).view(n, reps).all(1)
                done |= argmax & (hp.kl_factor * kl.detach() <= 0.01)
                weight = torch.where(argmax, 0.1 * hp.nll_factor, hp.nll_factor)
            # the last pass only reads the loss of the deltas returned (the study's code: steps - 1 updates)
            if bool(done.all()) or step == hp.steps - 1:
                break
            _update(opt, deltas, done, case_loss, init_norm, hp.clamp_factor)
            steps_run += (~done).cpu()
    log.debug("value optimisation: steps %s, nll %s", steps_run.tolist(), nll.tolist())
    return Values(
        init=init,
        delta={p: d.detach() for p, d in deltas.items()},
        nll=nll.detach().cpu().tolist(),
        steps=steps_run.tolist(),
    )
