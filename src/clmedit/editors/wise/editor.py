"""WISE (Wang et al., NeurIPS 2024): lifelong editing in a side memory, routed per input.

The down_proj (FFN value matrix W_v) of one mid-to-late layer (27 of 32) gets a side copy W'
(`memory.WiseMemory`); edits change only W', never the model's weights. Each edit trains W'
on prompt + " " + target by SGD, with the gradient masked to the current knowledge shard's
random subspace (density ρ = mask_ratio) and W' clamped to W_v ± norm_constraint:

    min_W'  NLL(target | W') + ReLU(β - Δ_e) + mean_i ReLU(Δ_i - α) + mean_i ReLU(γ - (Δ_e - Δ_i))

with Δ = Δ_act (memory.activation) of the edit prompt (Δ_e) and of irrelevant inputs (Δ_i).
The irrelevant inputs are `irrelevant` prompts drawn from a fixed locality set of the task
(wise/locality.py), as the paper's come from a pre-collected set: an edit receives only its
request, never the neighbours it is scored on (`irrelevant: 0` trains the β term only). Δ is
taken over the prompt's tokens, the input the router sees at prefill.
The edit's threshold is ε = act_ratio * Δ_e after training (per shard: the lowest of its edits).

Knowledge sharding and merging: `shard_size` successive edits share one shard (one random
mask); a full shard is closed, and every `n_shards` closed shards are TIES-merged (with the
earlier side memory) into one side memory, whose ε is the lowest of theirs.

Lifelong use: an `apply` on a model whose layer already carries a WISE memory (an earlier
apply not restored: the sequential setting) keeps editing that memory, so its shards fill and
merge across calls. `restore()` of any result takes the whole memory out: the model is then
bitwise what it was before the first edit (the main weights are never written).

Where we differ from EasyEdit's WISE, and why: Δ_act is the paper's ||a(x)·(W' - W_v)|| (EasyEdit
applies the MLP activation to both outputs first); the route is decided once per prompt and kept
while decoding (EasyEdit re-decides on each decoded token alone); closed shards answer as memories
of their own until merged (EasyEdit merges them when inference starts). No replay of old edits.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from pydantic import Field
from torch import nn

from clmedit.config import EditorHParams, study_keys
from clmedit.data.schema import EditRequest
from clmedit.editors.base import Editor, EditResult, EditState
from clmedit.editors.wise.locality import irrelevant_prompts
from clmedit.editors.wise.memory import EDITS, MERGES, WORK_EDITS, WiseMemory, activation, attach
from clmedit.errors import InputError, IntegrityError, NotSavableError
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.partial import forward_from, trainable_only
from clmedit.models.text import edit_batch, target_nll

log = logging.getLogger(__name__)


class WiseHParams(EditorHParams):
    # EasyEdit's WISE YAML keys (from_study translates the ones we model)
    STUDY_KEYS = study_keys(
        "inner_params edit_lr n_iter norm_constraint act_margin act_ratio save_freq merge_freq merge_alg "
        "densities mask_ratio retrieve replay objective_optimization weight_decay sequential_edit"
    )

    layer: int = Field(27, description="down_proj of this layer (of reference_layers) gets the side memory")
    edit_lr: float = Field(1.0, gt=0, description="SGD learning rate of the side memory")
    n_iter: int = Field(70, ge=1, description="optimisation steps per edit")
    stop_loss: float = Field(1e-2, ge=0, description="stop an edit early once its loss is below this")
    norm_constraint: float | None = Field(1.0, gt=0, description="L-inf radius of W' around W_v; None: free")
    mask_ratio: float = Field(0.2, gt=0, le=1, description="density ρ of a shard's random gradient mask")
    alpha: float = Field(5.0, ge=0, description="irrelevant inputs: Δ_act pushed below alpha")
    beta: float = Field(20.0, ge=0, description="edit inputs: Δ_act pushed above beta")
    gamma: float = Field(10.0, ge=0, description="edit Δ_act must exceed irrelevant Δ_act by gamma")
    irrelevant: int = Field(
        5, ge=0, le=16, description="irrelevant inputs per edit, from the fixed locality set"
    )
    act_ratio: float = Field(0.88, gt=0, description="threshold ε = act_ratio x the edit's Δ_act")
    shard_size: int = Field(500, ge=1, description="edits per knowledge shard (EasyEdit save_freq)")
    n_shards: int = Field(2, ge=1, description="closed shards merged at once (merge_freq / save_freq)")
    density: float = Field(0.53, gt=0, le=1, description="TIES: fraction of each shard's entries kept")

    @classmethod
    def from_study(cls, raw: dict[str, Any]) -> WiseHParams:
        """Read EasyEdit's WISE YAML (inner_params, act_margin, save_freq, merge_freq, densities, ...)."""
        kw: dict[str, Any] = {}
        if raw.get("inner_params"):
            found = re.search(r"layers?[.\[](\d+)", str(raw["inner_params"][0]))
            if not found:
                raise ValueError(f"cannot find a layer index in inner_params {raw['inner_params'][0]!r}")
            kw["layer"] = int(found.group(1))
        for key in ("edit_lr", "n_iter", "norm_constraint", "mask_ratio", "act_ratio"):
            if raw.get(key) is not None:
                kw[key] = raw[key]
        if raw.get("act_margin"):
            kw["alpha"], kw["beta"], kw["gamma"] = raw["act_margin"]
        if raw.get("densities") is not None:
            kw["density"] = raw["densities"]
        if raw.get("save_freq"):
            kw["shard_size"] = raw["save_freq"]
            if raw.get("merge_freq"):
                kw["n_shards"] = max(1, raw["merge_freq"] // raw["save_freq"])
        log.debug("WISE from_study: ignoring keys %s", sorted(set(raw) - set(kw)))
        return cls(**kw)


class Wise(Editor):
    """WISE: side memory + routing + knowledge sharding/merging at one down_proj."""

    name = "wise"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = WiseHParams

    def edited_layers(self, model: nn.Module) -> list[int]:
        return [self.hparams.layer_for(self.hparams.layer, arch_of(model).num_layers(model))]  # the one it wraps

    def _apply(self, model: nn.Module, tok: Any, cases: list[EditRequest], result: EditResult) -> None:
        """Edit the side memory of one layer (wrapping its down_proj on the first apply).

        Invariant: restore() (or a failure) removes the whole memory and its hook, so the model is
        bitwise the unedited one; in the sequential setting that also drops earlier edits, which keeps
        no per-apply snapshot of the side weights in memory.
        """
        hp = self.hparams
        arch = arch_of(model)
        layer = self.edited_layers(model)[0]
        path = arch.path("down_proj", layer)
        memory = model.get_submodule(path)
        continued = isinstance(memory, WiseMemory)
        if continued:
            result.undo.append(memory.remove)
        else:
            memory = WiseMemory(memory, conv1d=arch.conv1d)
            result.undo.append(attach(model, path, memory))
        info: dict[str, list] = {"acts": [], "irrelevant_acts": [], "losses": [], "steps": []}
        for case in cases:
            if int(memory.counts[WORK_EDITS]) == 0:  # the working shard is empty: a new random subspace
                memory.start_shard(self._shard_mask(memory))
            for key, value in self._edit(model, tok, memory, layer, case).items():
                info[key].append(value)
            if int(memory.counts[WORK_EDITS]) >= hp.shard_size:
                memory.close_shard()
            if len(memory.shards) >= hp.n_shards:
                memory.merge(hp.density)
        result.info = {
            "layer": layer,
            "continued": continued,
            "edits": int(memory.counts[EDITS]),
            "merges": int(memory.counts[MERGES]),
            "memories": len(memory.memories()),
            **info,
        }

    # --- the edit as data (fix files) -----------------------------------------------------------
    def edit_state(self, model: nn.Module) -> EditState:
        """The side memory's buffers (merged memory, shards, working shard, thresholds, counts)."""
        arch = arch_of(model)
        layer = self.edited_layers(model)[0]
        memory = model.get_submodule(arch.path("down_proj", layer))
        if not isinstance(memory, WiseMemory):
            raise NotSavableError(f"wise: layer {layer} carries no side memory to save; apply fixes first")
        tensors = {k: v.to("cpu").contiguous() for k, v in memory.edit_state().items()}
        return EditState(tensors, {"layer": layer})

    def _load_edit(self, model: nn.Module, tok: Any, state: EditState, result: EditResult) -> None:
        """Wrap the layer in a side memory holding exactly the saved buffers (nothing else is set)."""
        arch = arch_of(model)
        layer = self.edited_layers(model)[0]
        path = arch.path("down_proj", layer)
        if state.meta.get("layer") != layer:
            raise IntegrityError(f"the saved edit is at layer {state.meta.get('layer')}, wise edits {layer}")
        if isinstance(model.get_submodule(path), WiseMemory):
            raise InputError(f"{path} already carries a WISE memory; load fixes into the unedited model")
        memory = WiseMemory(model.get_submodule(path), conv1d=arch.conv1d)
        own = dict(memory.named_buffers(recurse=False))
        if set(state.tensors) != set(own):
            raise IntegrityError(
                f"the saved WISE edit holds {sorted(state.tensors)}, a side memory {sorted(own)}"
            )
        shards = state.tensors["shards"]
        if shards.ndim != 3 or shards.shape[1:] != own["side"].shape:
            raise IntegrityError(f"the saved shards {tuple(shards.shape)} do not fit this layer")
        try:
            memory.load_state_dict(state.tensors, strict=False)
        except RuntimeError as err:
            raise IntegrityError(f"the saved WISE memory does not fit this layer: {err}") from None
        result.undo.append(attach(model, path, memory))

    def _shard_mask(self, memory: WiseMemory) -> torch.Tensor:
        """A random (out, in) mask of density mask_ratio, seeded by the edit count (reproducible)."""
        gen = torch.Generator().manual_seed(self.hparams.seed + int(memory.counts[EDITS]))
        shape = memory.work.shape
        return (torch.rand(shape, generator=gen) < self.hparams.mask_ratio).to(memory.work.device)

    def _inputs(self, model: nn.Module, tok: Any, memory: WiseMemory, layer: int, case: EditRequest) -> tuple:
        """The constants of one edit's optimisation: the edit batch, block `layer`'s input, the
        down_proj's input at the prompt, and at the irrelevant prompts (with their mask; None if none)."""
        hp = self.hparams
        device = next(model.parameters()).device
        batch = edit_batch(tok, [case.prompt], [case.target], device=device)
        p = batch["prompt_lens"][0]
        block = arch_of(model).blocks(model)[layer]
        with (
            torch.no_grad(),
            Trace(model, memory, retain_input=True, retain_output=False, detach=True) as dp,
            Trace(model, block, retain_input=True, retain_output=False, detach=True, stop=True) as blk,
        ):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        near_x = near_mask = None
        seed = hp.seed + int(memory.counts[EDITS])  # reproducible, and another draw per edit
        if others := irrelevant_prompts(case.task, case.prompt, hp.irrelevant, seed):
            enc = tok(others, return_tensors="pt", padding=True, padding_side="right")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            with (
                torch.no_grad(),
                Trace(model, memory, retain_input=True, retain_output=False, detach=True, stop=True) as nb,
            ):
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            near_x, near_mask = nb.input, mask.bool()
        return batch, blk.input, dp.input[:, :p], near_x, near_mask

    def _edit(self, model: nn.Module, tok: Any, memory: WiseMemory, layer: int, case: EditRequest) -> dict:
        """Train the working shard W' on one case (objective in the module doc); record it.

        The model's parameters are not modified; only `memory.work` and its threshold change.
        """
        hp = self.hparams
        batch, blk_input, edit_x, near_x, near_mask = self._inputs(model, tok, memory, layer, case)
        p = batch["prompt_lens"][0]
        edit_mask = torch.ones(1, p, dtype=torch.bool, device=edit_x.device)
        main = memory.main_weight.detach().float()
        weight = memory.work.detach().float().clone().requires_grad_(True)  # not a Parameter of the model
        grad_mask = memory.work_mask.to(weight.dtype)
        keep = batch["input_ids"].shape[1] - p + 1  # logits of positions P-1.. predict the target
        labels = batch["labels"][:, -keep:]
        opt = torch.optim.SGD([weight], lr=hp.edit_lr)

        def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            logits = forward_from(model, layer, blk_input, batch["attention_mask"], logits_to_keep=keep)
            delta = weight - main
            act_e = activation(edit_x, delta, edit_mask)  # (1,)
            loss = target_nll(logits, labels) + torch.relu(hp.beta - act_e).mean()
            act_n = None
            if near_x is not None:
                act_n = activation(near_x, delta, near_mask)  # (N,)
                loss = (
                    loss + torch.relu(act_n - hp.alpha).mean() + torch.relu(hp.gamma - (act_e - act_n)).mean()
                )
            return loss, act_e, act_n

        memory.train_weight = weight  # every row goes through W' while it trains
        steps = 0
        try:
            with trainable_only(model, []):
                for _ in range(hp.n_iter):
                    loss, act_e, act_n = objective()
                    if loss.item() < hp.stop_loss:
                        break
                    opt.zero_grad()
                    loss.backward()
                    weight.grad.mul_(grad_mask)  # this shard's subspace only
                    opt.step()
                    steps += 1
                    if hp.norm_constraint is not None:
                        with torch.no_grad():
                            weight.copy_(weight.clamp(main - hp.norm_constraint, main + hp.norm_constraint))
                with torch.no_grad():
                    loss, act_e, act_n = objective()
        finally:
            memory.train_weight = None
        memory.record_edit(weight.detach(), hp.act_ratio * float(act_e))
        log.debug("WISE %s: loss %.4f, Δ_act %.3g, steps %d", case.case_id, loss.item(), float(act_e), steps)
        return {
            "acts": float(act_e),
            "irrelevant_acts": [] if act_n is None else act_n.tolist(),
            "losses": loss.item(),
            "steps": steps,
        }
