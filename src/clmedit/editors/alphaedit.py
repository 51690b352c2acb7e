"""AlphaEdit: MEMIT whose update is projected onto the null space of preserved knowledge (Fang et al., 2025).

Everything is MEMIT (target residual at the last edited layer, spread over the layers' down
projections) except the per-layer solve (locate.solve.projected_update):

    dW_i = R_i^T K_i (P_i (K_i^T K_i + K_p^T K_p) + l2 I)^-1 P_i

P_i projects onto the null space of C_i = E[k k^T] over a code corpus (locate.stats): the
update leaves the outputs of the keys the model sees in ordinary code alone, which is what
keeps many sequential edits from eroding the model. K_p^T K_p sums the keys of the earlier
edits that are still in the model (the lifelong setting), so a new edit does not undo them;
restoring an edit takes its keys out again. The edit's state (a fix file, a sequential run's
snapshot) holds K_p^T K_p beside the weights, so fixes added after loading it keep the earlier
ones' keys protected, as in one stream.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from clmedit.data.schema import EditRequest
from clmedit.editors.base import EditResult, EditState
from clmedit.editors.memit import Memit, MemitHParams
from clmedit.editors.session import Snapshot
from clmedit.errors import IntegrityError
from clmedit.locate.solve import null_space_projector, projected_update
from clmedit.models.arch import arch_of
from clmedit.models.text import model_name


class AlphaEditHParams(MemitHParams):
    STUDY_KEYS = MemitHParams.STUDY_KEYS | {"L2", "P_loc"}

    mom2_adjustment: bool = Field(True, description="must stay on: the projector is built from C")
    nullspace_threshold: float = Field(
        2e-2, gt=0, description="eigenvalues of C below this span the null space"
    )
    l2: float = Field(10.0, gt=0, description="ridge weight of the projected solve [L2]")

    @classmethod
    def from_study(cls, raw: dict[str, Any]):
        """EasyEdit's AlphaEdit YAML spells the ridge weight `L2`."""
        raw = {("l2" if k == "L2" else k): v for k, v in raw.items()}
        return super().from_study(raw)


class AlphaEdit(Memit):
    name = "alphaedit"
    HParams = AlphaEditHParams

    def __init__(self, hparams: AlphaEditHParams | None = None):
        super().__init__(hparams)
        if not self.hparams.mom2_adjustment:
            raise ValueError("alphaedit needs mom2_adjustment=true: its projector comes from the statistics")
        self._projectors: dict[tuple[str, int], torch.Tensor] = {}
        self._null_dims: dict[int, int] = {}  # layer -> dimension of the null space (for info)
        self._prior: dict[tuple[str, int], torch.Tensor] = {}  # sum of kept edits' k k^T per layer
        self._pending: dict[tuple[str, int], torch.Tensor] = {}  # this apply's keys, committed on success

    def projector(self, model, layer: int) -> torch.Tensor:
        """P for `layer` (float64), computed once per model and layer from the statistics `prepare` loaded."""
        key = (model_name(model), layer)
        if key not in self._projectors:
            proj = null_space_projector(self._covs[key], self.hparams.nullspace_threshold)
            self._projectors[key] = proj
            self._null_dims[layer] = int(round(float(proj.trace())))  # trace of a projector = its rank
        return self._projectors[key]

    def layer_update(self, model) -> Any:
        name = model_name(model)

        def update(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
            key = (name, layer)
            self._pending[key] = keys.double().T @ keys.double()
            proj = self.projector(model, layer).to(keys.device)
            prior = self._prior.get(key)
            return projected_update(keys, resid, proj, None if prior is None else prior.to(keys.device),
                                    self.hparams.l2)  # fmt: skip

        return update

    def _apply(self, model, tok, cases: list[EditRequest], result: EditResult) -> None:
        """MEMIT's edit with the projected solve; afterwards this edit's keys join the prior.

        Invariant: only the edited down_proj weights (and this editor's prior) change; restore()
        writes the weights back bitwise and removes the keys from the prior.
        """
        self._pending = {}
        super()._apply(model, tok, cases, result)
        added, self._pending = self._pending, {}
        before = {key: self._prior.get(key) for key in added}
        # registered before the prior changes; a Snapshot, so a sequential session keeps only the first
        result.undo.append(
            Snapshot({(id(self), "prior", key): v for key, v in before.items()}, self._put_prior)
        )
        for key, gram in added.items():
            self._prior[key] = gram if before[key] is None else before[key] + gram
        result.info["nullspace_dims"] = {layer: self._null_dims[layer] for (_, layer) in added}

    def edit_state(self, model) -> EditState:
        """The edited weights (MEMIT's state) and, per edited layer, the kept edits' K_p^T K_p (`prior.<layer>`)."""
        state = super().edit_state(model)
        name = model_name(model)
        for layer in self.edited_layers(model):
            if (name, layer) in self._prior:
                state.tensors[f"prior.{layer}"] = self._prior[(name, layer)].detach().cpu().contiguous()
        return state

    def _load_edit(self, model, tok, state: EditState, result: EditResult) -> None:
        """The weights as MEMIT loads them, then the priors (taken out again by restore())."""
        name, layers = model_name(model), self.edited_layers(model)
        priors = {k: v for k, v in state.tensors.items() if k.startswith("prior.")}
        for key, value in priors.items():
            layer = key.removeprefix("prior.")
            if not layer.isdigit() or int(layer) not in layers:
                raise IntegrityError(f"the saved edit holds {key!r}; {self.name} edits layers {layers} here")
            arch = arch_of(model)
            width = arch.weight_out_in(arch.down_proj_module(model, int(layer))).shape[1]  # the key's width
            if tuple(value.shape) != (width, width):
                raise IntegrityError(f"the saved {key} is {tuple(value.shape)}, not ({width}, {width})")
        weights = {k: v for k, v in state.tensors.items() if k not in priors}
        super()._load_edit(model, tok, EditState(weights, state.meta), result)
        keys = {(name, int(k.removeprefix("prior."))): v for k, v in priors.items()}
        saved = {(id(self), "prior", key): self._prior.get(key) for key in keys}
        result.undo.append(Snapshot(saved, self._put_prior))
        for key, value in keys.items():
            self._prior[key] = value.double().clone()

    def _put_prior(self, entry: tuple, value: torch.Tensor | None) -> None:
        """Put one layer's prior back exactly as it was before the edit (undos run last-in, first-out)."""
        key = entry[2]
        if value is None:
            self._prior.pop(key, None)
        else:
            self._prior[key] = value
