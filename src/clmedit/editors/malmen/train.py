"""Meta-training MALMEN's hypernetwork on a training split of edit cases.

One step, for a batch of cases: shifts S_l = net(pairs of the batch) for every edited layer,
then, with W_l + S_l in place (added in forward hooks, so gradients reach the net),

    loss = edit_coef * NLL(target | prompt and rephrase)                 (edit / generalization)
         + loc_coef  * KL(p_before || p_after) on the neighbours' tokens  (locality)

and an Adam step on the net (meta-lr). The model itself never changes and gets no gradient.

Why it is cheap: edits touch only the last few layers, so the residual stream entering the
first edited layer is a constant. It is computed once per training sequence, and every step
runs only the upper stack (models/partial.py). The (key, gradient) pairs of the unedited
model are constants too, extracted once. Both are kept per case in a CaseStore (on disk by
default) and only one batch's worth is on the device at a time, so the peak memory does not
grow with the number of training cases (benchmarks/malmen_memory.py). Model selection: the net with the lowest loss on a
validation split of the *training* cases (checked every `val_every` steps) is kept.

Two things make a short training run useful. The step size eta_l decides whether an edit
lands at all (a factor of ten either way goes from "no change" to "every neighbour broken"),
so its start is picked on training batches from a log grid around `init_lr`, and the log step
sizes and log ridge weights learn at their own, higher rate (`scale_lr`; cf. MEND's lr-lr).
"""

from __future__ import annotations

import copy
import logging
import random
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from clmedit.data.schema import EditCase
from clmedit.editors.malmen.hypernet import MalmenNet
from clmedit.editors.malmen.pairs import Pairs, iter_key_grad_pairs
from clmedit.editors.malmen.store import CaseStore
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.partial import forward_from, hidden_before, trainable_only
from clmedit.models.text import (
    IGNORE,
    edit_rows,
    model_name,
    pad_batch,
    prompt_ids,
    right_pad,
    target_ids,
    target_nll,
)

log = logging.getLogger(__name__)


@dataclass
class _Seq:
    hidden: torch.Tensor  # (T, d_model): residual stream entering the first edited layer
    labels: torch.Tensor  # (T,): target ids on target tokens, IGNORE elsewhere


def _sequences(
    model, tok, cases: list[EditCase], first_layer: int, store: CaseStore, loc_neighbours: int = 1,
    batch_size: int = 32,
) -> None:  # fmt: skip
    """Cache, per case i, store[("seqs", i)]: 'edit' = [prompt + target, rephrase + target], 'loc' =
    its first `loc_neighbours` neighbours (+ their cached answers). A loc row's labels mark where
    the KL is taken (0) or not (IGNORE): from the prompt's last token on when an answer is known,
    else every token. Each row is hidden state (T, d_model) entering `first_layer` + labels (T,).

    Hidden states are computed in right-padded batches of cases of similar length (causal
    attention: a row's real positions do not see its padding), cut back to each row's length,
    and handed to the store case by case (nothing accumulates on the device).
    """
    name = model_name(model)
    device = next(model.parameters()).device
    per_case: list[list[tuple[str, list[int], list[int]]]] = []  # (kind, ids, labels) rows of each case
    for case in cases:
        ids, labels, _ = edit_rows(tok, [case.prompt, case.rephrase], [case.target] * 2)
        rows = [("edit", r, lab) for r, lab in zip(ids, labels)]
        for n in case.neighbours[:loc_neighbours]:
            p = prompt_ids(tok, n.prompt)
            answer = target_ids(tok, n.prompt, n.answers[name]) if name in n.answers else []
            skip = len(p) - 1 if answer else 0
            rows.append(("loc", p + answer, [IGNORE] * skip + [0] * (len(p) + len(answer) - skip)))
        per_case.append(rows)
    order = sorted(range(len(cases)), key=lambda c: max(len(r[1]) for r in per_case[c]))
    step = max(1, batch_size // (2 + loc_neighbours))  # cases per forward pass
    for start in tqdm(range(0, len(order), step), desc="malmen: cache hidden states", leave=False):
        chunk = order[start : start + step]
        rows = [r for c in chunk for r in per_case[c]]
        batch = pad_batch(tok, [r[1] for r in rows], device)
        hidden = hidden_before(model, first_layer, batch["input_ids"], batch["attention_mask"])
        j = 0
        for c in chunk:
            tensors = {}
            for k, (kind, r_ids, labels) in enumerate(per_case[c]):
                tensors[f"{kind}.{k}.hidden"] = hidden[j, : len(r_ids)]
                tensors[f"{kind}.{k}.labels"] = torch.tensor(labels)
                j += 1
            store.put(("seqs", c), tensors)


def _load_seqs(store: CaseStore, case: int) -> dict[str, list[_Seq]]:
    got = store.get(("seqs", case))
    out: dict[str, list[_Seq]] = {"edit": [], "loc": []}
    for key in sorted((k for k in got if k.endswith(".hidden")), key=lambda k: int(k.split(".")[1])):
        kind, k, _ = key.split(".")
        out[kind].append(_Seq(got[key], got[f"{kind}.{k}.labels"]))
    return out


class TrainingData:
    """The training cases' (key, gradient) pairs and hidden states, held in a CaseStore; `batch`
    brings one batch's worth onto the device. Also the mean / std of [u; g] over `stats_cases`."""

    def __init__(self, model, tok, cases: list[EditCase], layers: list[int], hp, stats_cases: list[int]):
        device = next(model.parameters()).device
        self.layers = layers
        self.store = CaseStore(hp.store, device)
        counted = set(stats_cases)
        self.moments = {l_: [0, 0.0, 0.0] for l_ in layers}  # layer -> count, sum, sum of squares (f64)
        chunks = iter_key_grad_pairs(model, tok, cases, layers, hp.pair_batch_size, hp.tokens)
        starts = range(0, len(cases), hp.pair_batch_size)
        for start, chunk in tqdm(zip(starts, chunks), total=len(starts), desc="malmen: key-gradient pairs", leave=False):
            for case in range(start, min(start + hp.pair_batch_size, len(cases))):
                rows = chunk.owner == case  # may be none (a target with no token)
                tensors = {f"k{l_}": chunk.keys[l_][rows] for l_ in layers}
                tensors.update({f"g{l_}": chunk.grads[l_][rows] for l_ in layers})
                self.store.put(("pairs", case), tensors)
                if case in counted:
                    for l_ in layers:
                        x = torch.cat([chunk.keys[l_][rows], chunk.grads[l_][rows]], -1).double()
                        m = self.moments[l_]
                        m[0], m[1], m[2] = m[0] + len(x), m[1] + x.sum(0), m[2] + (x * x).sum(0)
        _sequences(model, tok, cases, layers[0], self.store, hp.loc_neighbours)

    def batch(self, idx: list[int]) -> tuple[Pairs, list[dict[str, list[_Seq]]]]:
        got = [self.store.get(("pairs", i)) for i in idx]
        owner = torch.cat(
            [torch.full((len(g[f"k{self.layers[0]}"]),), i, dtype=torch.long) for i, g in zip(idx, got)]
        )
        pairs = Pairs(
            {l_: torch.cat([g[f"k{l_}"] for g in got]) for l_ in self.layers},
            {l_: torch.cat([g[f"g{l_}"] for g in got]) for l_ in self.layers},
            owner.to(self.store.device),
        )
        return pairs, [_load_seqs(self.store, i) for i in idx]


def _collate(seqs: list[_Seq]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to (B, T, d) hidden, (B, T) mask, (B, T) labels."""
    hidden, mask = right_pad([s.hidden for s in seqs], 0.0)
    labels, _ = right_pad([s.labels.to(hidden.device) for s in seqs], IGNORE)
    return hidden, mask, labels


def _kl(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked positions of KL(softmax(before) || softmax(after)); logits (B, T, V)."""
    lp, lq = before.float().log_softmax(-1), after.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class MetaLoss:
    """The post-edit loss of a batch of cases, differentiable in the net's parameters."""

    def __init__(
        self, model: nn.Module, net: MalmenNet, layers: list[int], edit_coef: float, loc_coef: float
    ):
        self.model, self.net, self.layers = model, net, layers
        self.paths = [arch_of(model).path("down_proj", layer) for layer in layers]
        self.edit_coef, self.loc_coef = edit_coef, loc_coef

    def __call__(self, pairs: Pairs, seqs: list[dict[str, list[_Seq]]]) -> tuple[torch.Tensor, dict]:
        shifts = [
            self.net.weight_shift(i, pairs.keys[l_], pairs.grads[l_]) for i, l_ in enumerate(self.layers)
        ]
        edit = _collate([s for c in seqs for s in c["edit"]])
        loc = _collate([s for c in seqs for s in c["loc"]])
        with torch.no_grad():
            before = forward_from(self.model, self.layers[0], loc[0], loc[1])
        with ExitStack() as stack:
            for path, shift in zip(self.paths, shifts):
                # W + S on the fly: out + inp @ S^T (S: float32 (d_out, d_in), nn.Linear's orientation)
                add = lambda o, i, s=shift: o + (i.float() @ s.T).to(o.dtype)  # noqa: E731
                stack.enter_context(Trace(self.model, path, retain_output=False, edit_output=add))
            edit_loss = target_nll(forward_from(self.model, self.layers[0], edit[0], edit[1]), edit[2])
            kl_mask = (loc[2] != IGNORE).float()
            loc_loss = _kl(before, forward_from(self.model, self.layers[0], loc[0], loc[1]), kl_mask)
        loss = self.edit_coef * edit_loss + self.loc_coef * loc_loss
        return loss, {"edit": float(edit_loss.detach()), "loc": float(loc_loss.detach())}


@torch.no_grad()
def calibrate_step_size(
    net: MalmenNet,
    loss_fn: MetaLoss,
    data: TrainingData,
    train: list[int],
    batch_size: int,
    rng,
    batches: int = 4,
) -> dict[float, float]:
    """Set every eta_l to the value of {init * 10^(k/2), k = -2..4} with the lowest mean meta-loss
    on a few training batches. Returns {eta: loss}."""
    base = float(net.log_lr.detach().exp().mean())
    chunks = [rng.sample(train, min(batch_size, len(train))) for _ in range(batches)]
    losses: dict[float, float] = {}
    for k in range(-2, 5):
        eta = base * 10 ** (k / 2)
        net.log_lr.fill_(torch.tensor(eta).log().item())
        losses[eta] = sum(float(loss_fn(*data.batch(c))[0]) for c in chunks) / batches
    best = min(losses, key=losses.get)
    net.log_lr.fill_(torch.tensor(best).log().item())
    log.info("malmen: step size %.2e (grid %s)", best, {f"{e:.1e}": round(v, 3) for e, v in losses.items()})
    return losses


def _mean_loss(loss_fn, data, idx: list[int], batch_size: int) -> float:
    """The meta-loss averaged over the cases `idx` (no gradient), batch by batch."""
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            total += float(loss_fn(*data.batch(chunk))[0]) * len(chunk)
    return total / len(idx)


def meta_train(
    model: nn.Module, tok, cases: list[EditCase], net: MalmenNet, layers: list[int], hp
) -> tuple[MalmenNet, dict]:
    """Train `net` in place on `cases` (hp: MalmenHParams); returns (best net, history).

    The last `hp.val_fraction` of a seeded shuffle of the cases is the validation split.
    """
    rng = random.Random(hp.seed)
    torch.manual_seed(hp.seed)
    order = list(range(len(cases)))
    rng.shuffle(order)
    n_val = max(1, round(hp.val_fraction * len(cases))) if len(cases) > 1 else 0
    val, train = order[:n_val], order[n_val:] or order
    data = None
    with trainable_only(model):  # the model gets no gradient; only the net learns
        try:
            data = TrainingData(model, tok, cases, layers, hp, stats_cases=train)
            for i, layer in enumerate(layers):
                net.set_moments(i, *data.moments[layer])
            net.to(next(model.parameters()).device).train()
            loss_fn = MetaLoss(model, net, layers, hp.edit_coef, hp.loc_coef)
            grid = (
                calibrate_step_size(net, loss_fn, data, train, hp.batch_size, rng)
                if hp.calibrate_lr
                else None
            )
            scales = [net.log_lr, net.log_lambda]
            rest = [p for p in net.parameters() if all(p is not q for q in scales)]
            opt = torch.optim.Adam(
                [{"params": rest, "lr": hp.meta_lr}, {"params": scales, "lr": hp.scale_lr}]
            )

            def evaluate(idx: list[int]) -> float:
                return _mean_loss(loss_fn, data, idx, hp.batch_size)

            history: dict = {"step": [], "train": [], "val": [], "best_step": 0}
            if grid is not None:
                history["init_lr_grid"] = grid
            best = evaluate(val) if val else float("inf")
            history["val_start"], best_state = best, copy.deepcopy(net.state_dict())
            for step in tqdm(range(1, hp.steps + 1), desc="malmen: meta-train", leave=False):
                chunk = rng.sample(train, min(hp.batch_size, len(train)))
                loss, parts = loss_fn(*data.batch(chunk))
                opt.zero_grad()
                loss.backward()
                opt.step()
                history["train"].append(float(loss.detach()))
                if val and (step % hp.val_every == 0 or step == hp.steps):
                    score = evaluate(val)
                    history["step"].append(step)
                    history["val"].append(score)
                    if score < best:
                        best, best_state, history["best_step"] = score, copy.deepcopy(net.state_dict()), step
                    log.info(
                        "malmen step %d: train %.4f (%s) val %.4f", step, float(loss.detach()), parts, score
                    )
            if val:
                net.load_state_dict(best_state)
            history["val_best"] = best
        finally:
            if data is not None:
                data.store.close()
    return net.eval(), history
