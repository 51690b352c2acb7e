"""UltraEdit: training-free lifelong editing by one closed-form shift per edit (Gu et al., 2025).

MALMEN without the hypernetwork. For the edited down projections l and every token t that
predicts a target token (editors.malmen.pairs, on the model as it is now):

    u_t = input of down_proj_l at t,   g_t = dL/d(output of down_proj_l at t)
    [u^; g^] = ([u; g] - mean) / std                lifelong normalisation: mean and std of every
                                                    [u; g] row seen since the first edit (all
                                                    edited layers share them, as the paper's)
    v_t = -lr * ||u^_t||^2 * g^_t                   the output change of one normalised gradient step
    S_l = argmin_S sum_t ||S u_t - v_t||^2 + lambda ||S||_F^2        (ridge_solve, MALMEN's)
    W_l <- W_l + S_l

Nothing is trained and nothing but three running sums is kept between edits (no key memory,
no covariance statistics): the statistics include this edit's rows before it is solved, as
the paper updates them first. The paper's GPT-J setting edits fc_out (down_proj) of layers
18..26 of 28 with lr 1e-6 and lambda 1; lr here is per normalised feature, so small models
need a larger one (presets/ultraedit). `center: false` (tests only) skips the mean: on a fresh
editor a one-token edit gives one row per layer, which its own mean would cancel.

Invariant: only the edited down_proj weights and the running sums change; restore() writes
both back bitwise. A fix file holds the weights and the sums, so further fixes applied after
loading it are normalised as if the stream had never stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from clmedit.config import EditorHParams
from clmedit.data.schema import EditRequest
from clmedit.editors.base import Editor, EditResult, EditState, backup_weights
from clmedit.editors.malmen.hypernet import mean_std, ridge_solve
from clmedit.editors.malmen.pairs import key_grad_pairs
from clmedit.editors.session import Snapshot
from clmedit.errors import IntegrityError
from clmedit.models.arch import arch_of

SUMS = ("norm.count", "norm.total", "norm.total_sq")  # the running sums, as fix-file tensor names


class UltraEditHParams(EditorHParams):
    reference_layers: int = Field(28, gt=0, description="depth the layer indices were chosen for (GPT-J)")
    layers: list[int] = Field(
        default_factory=lambda: list(range(18, 27)), description="edited down_proj layers (GPT-J: 18..26)"
    )
    lr: float = Field(1e-6, gt=0, description="step size of the normalised gradient step [lr]")
    ridge: float = Field(1.0, gt=0, description="lambda of the least-squares shift")
    center: bool = Field(
        True, description="subtract the lifelong mean before scaling (the paper); off: scale only"
    )
    pair_batch_size: int = Field(8, ge=1, description="cases per forward/backward when reading pairs")


class UltraEdit(Editor):
    name = "ultraedit"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = UltraEditHParams

    def __init__(self, hparams: UltraEditHParams | None = None):
        super().__init__(hparams)
        # count, sum and sum of squares of every [u; g] row so far: float64 (count as a 0-d tensor)
        self.sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def edited_layers(self, model) -> list[int]:
        return self.hparams.layers_for(self.hparams.layers, arch_of(model).num_layers(model))

    def _apply(self, model, tok, cases: list[EditRequest], result: EditResult) -> None:
        """W_l += S_l for every edited layer, all cases of this apply jointly (module docstring)."""
        arch = arch_of(model)
        layers = self.edited_layers(model)
        modules = {l_: arch.down_proj_module(model, l_) for l_ in layers}
        # registered before any change: a failure at any point undoes the sums and every layer shifted
        result.undo.append(Snapshot({(id(self), "sums"): self.sums}, self._put_sums))
        paths = {arch.path("down_proj", l_): m.weight for l_, m in modules.items()}
        result.undo.append(backup_weights(paths))
        norms = self._step(model, tok, cases, modules)
        result.info = {"layers": layers, "shift_norms": norms, "rows_seen": int(self.sums[0])}

    def _step(self, model, tok, cases: list[EditRequest], modules: dict) -> dict[int, float]:
        """One closed-form shift of every edited layer from the pairs of the model as it is now."""
        hp, arch, layers = self.hparams, arch_of(model), list(modules)
        pairs = key_grad_pairs(model, tok, cases, layers, hp.pair_batch_size)
        self._add(torch.cat([torch.cat([pairs.keys[l_], pairs.grads[l_]], -1) for l_ in layers]).double())
        mean, std = mean_std(int(self.sums[0]), self.sums[1], self.sums[2])
        if not hp.center:
            mean = torch.zeros_like(mean)
        norms = {}
        with torch.no_grad():
            for l_, module in modules.items():
                keys, grads = pairs.keys[l_].double(), pairs.grads[l_].double()
                feats = (torch.cat([keys, grads], -1) - mean.to(keys.device)) / std.to(keys.device)
                k_hat, g_hat = feats.split([keys.shape[1], grads.shape[1]], -1)
                values = -hp.lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
                shift = ridge_solve(keys, values, hp.ridge)
                weight = arch.weight_out_in(module)  # (d_out, d_in) view, in place
                weight.add_(shift.to(weight.dtype))
                norms[l_] = float(shift.norm())
        return norms

    def _add(self, rows: torch.Tensor) -> None:
        """Fold `rows` (n, d_key + d_value) into the lifelong sums (new tensors: snapshots keep the old)."""
        rows = rows.cpu()
        batch = (torch.tensor(float(len(rows)), dtype=torch.float64), rows.sum(0), (rows * rows).sum(0))
        if self.sums is not None and self.sums[1].shape != batch[1].shape:
            raise ValueError(f"{self.name}: this editor's statistics are for another model width")
        self.sums = batch if self.sums is None else tuple(a + b for a, b in zip(self.sums, batch))

    def _put_sums(self, _key: Any, value: tuple[torch.Tensor, ...] | None) -> None:
        self.sums = value

    # --- the edit as data: the weights, plus the running sums that normalise further edits ----------
    def edit_state(self, model) -> EditState:
        state = super().edit_state(model)
        if self.sums is not None:
            state.tensors.update({name: t.clone().contiguous() for name, t in zip(SUMS, self.sums)})
        return state

    def _load_edit(self, model, tok, state: EditState, result: EditResult) -> None:
        """The weights (the default's checks), then the running sums, which must be whole and finite."""
        sums = [state.tensors.get(name) for name in SUMS]
        rest = EditState({k: v for k, v in state.tensors.items() if k not in SUMS}, state.meta)
        super()._load_edit(model, tok, rest, result)
        if all(t is None for t in sums):
            return
        if any(t is None for t in sums) or sums[0].ndim != 0 or sums[1].shape != sums[2].shape:
            raise IntegrityError(f"the saved {self.name} statistics are incomplete or mis-shaped")
        result.undo.append(Snapshot({(id(self), "sums"): self.sums}, self._put_sums))
        self.sums = tuple(t.double() for t in sums)
