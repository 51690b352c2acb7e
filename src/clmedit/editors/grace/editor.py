"""GRACE: a codebook adaptor on one down_proj; the weights are never touched.

The down_proj of layer L (27 of 32) is wrapped by `GraceLayer`. At a prompt's prefill the
wrapper computes each row's key (`Grace.keys`: the down_proj input at the last prompt token)
and looks it up in the codebook; a row whose key lies within an entry's radius is *matched*
and its output is replaced by that entry's value; every other row is untouched (output
bitwise equal to the unedited layer's), which is what makes GRACE specific.

What a value is and where it applies (`replacement`). The protocol greedily decodes
len(target) tokens with a KV cache after one prefill.
- "last" (default; the study's GRACE = EasyEdit's `replace_last`, `val_init: cold`): one value
  vector v, written at the key token; at each decoded token the layer computes that token's
  own key and writes v only when it lies inside its nearest entry's ball. v is trained under
  teacher forcing on prompt + " " + target with the output replaced at the key token only:
  min_v -sum_k log p(y_k | prompt, y_<k ; out[P-1] := v), 30 Adam steps, lr 1.0, from U[0, 1).
- "key": v at the key token only, decoded tokens untouched (the study's A-GRACE).
- "steps" (ours, for small models): a value is a sequence V = (v_0, .., v_{S-1}), S = the
  number of target tokens; v_0 replaces the output at the key token and v_k the output at the
  k-th decoded token of a matched row; after S steps the row runs free. Trained as above with
  out[P-1+k] := v_k, usually from the unedited outputs ("warm"). On smollm2-135m one vector
  steers the first token alone; "steps" reaches effectiveness EM 100 (README table).

Per-row state is reset at every new prefill: a call with a KV cache of length 0 (or no cache
and not a recomputation of the last prefill) is a new prompt. Batches may be left-padded:
the prompt mask comes from the attention mask seen by a forward pre-hook on the model.

Keys come from `Grace.keys(inputs, prompt_mask)`; subclasses (A-GRACE) override it to map
the prefill's down_proj inputs to any key space, and the wrapper always calls that method.
Restore removes the wrapper and the hook: the model is then bitwise what it was.

Lifelong editing: applying again without restoring extends the one wrapper's codebook (no nested
wrappers); each result undoes its own inserts, last-in-first-out (`_apply`). As data (fix files),
`edit_state` holds the codebook and `_load_edit` rebuilds the wrapper from it, never training.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from clmedit.data.schema import EditCase, EditRequest
from clmedit.editors.base import Editor, EditResult, EditState, replace_module
from clmedit.editors.grace.codebook import Codebook
from clmedit.editors.grace.hparams import DECODE, GraceHParams
from clmedit.editors.grace.layer import GraceLayer
from clmedit.editors.grace.value import train_value
from clmedit.errors import InputError, IntegrityError, NotSavableError
from clmedit.locate.keys import key_distance
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.text import (
    edit_batch,
    gather_rows,
    last_position,
    pad_batch,
    prompt_ids,
)

log = logging.getLogger(__name__)


class Grace(Editor):
    """GRACE (Hartvigsen et al., 2023): discrete key-value adaptor at one down_proj."""

    name = "grace"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = GraceHParams
    APPLY_SECONDS = {"cnle": 0.5, "csne": 1.2}

    # --- keys -----------------------------------------------------------------------------------
    def keys(self, inputs: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Key per row: the down_proj input (B, T, d) at the last prompt position -> (B, d).

        `prompt_mask` (B, T) is true on prompt tokens (left- or right-padded). Override to use
        another key; it is called both when inserting and at every prefill.
        """
        return gather_rows(inputs, last_position(prompt_mask))

    def entry_radius(self, key: torch.Tensor) -> float | None:
        """The radius of a new codebook entry at `key`; None: the codebook's `eps` (GRACE)."""
        return None

    def companion_keys(self, model: nn.Module, tok: Any, case: EditRequest) -> torch.Tensor | None:
        """Further keys (J, d_key) that answer with `case`'s entry, each a ball of its own
        (`entry_radius`); None: the inserted key alone (GRACE)."""
        return None

    def insert_key(self, model: nn.Module, tok: Any, case: EditRequest, inputs: torch.Tensor,
                   prompt_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The key `case` is inserted under: `keys` over the prompt positions of the edit sequence's
        down_proj inputs (B=1, T, d), which the value training traced anyway."""
        return self.keys(inputs, prompt_mask)[0]

    def edit_layer(self, model: nn.Module) -> int:
        return self.hparams.layer_for(self.hparams.layer, arch_of(model).num_layers(model))

    def edited_layers(self, model: nn.Module) -> list[int]:
        return [self.edit_layer(model)]  # the down_proj it wraps

    @torch.no_grad()
    def prompt_keys(self, model: nn.Module, tok: Any, prompts: list[str]) -> torch.Tensor:
        """Keys (N, d_key) of formatted prompts, as the wrapper would compute them at prefill."""
        path = arch_of(model).path("down_proj", self.edit_layer(model))
        device = next(model.parameters()).device
        enc = pad_batch(tok, [prompt_ids(tok, p) for p in prompts], device)
        with Trace(model, path, retain_input=True, retain_output=False, detach=True, stop=True) as tr:
            model(**enc, use_cache=False)
        return self.keys(tr.input, enc["attention_mask"].bool())

    def key_record(self, model: nn.Module, tok: Any, case: EditCase) -> dict[str, Any]:
        """Keys of prompt, rephrase and neighbours (as the codebook sees them) and their distances
        to the prompt's key, in the codebook's metric; the data of the distance and PCA figures."""
        k = self.prompt_keys(model, tok, [case.prompt, case.rephrase, *(n.prompt for n in case.neighbours)])
        k = k.float().cpu()
        d = key_distance(k[1:], k[:1], self.hparams.dist_fn)[:, 0].tolist()

        def short(v: torch.Tensor) -> list[float]:
            return [float(f"{x:.4g}") for x in v.tolist()]

        return {
            "distances": {"rephrase": d[0], "neighbours": d[1:], "radius": self.hparams.eps},
            "keys": {"prompt": short(k[0]), "rephrase": short(k[1]), "neighbours": [short(x) for x in k[2:]]},
        }

    # --- apply ----------------------------------------------------------------------------------
    def _apply(self, model: nn.Module, tok: Any, cases: list[EditRequest], result: EditResult) -> None:
        """Insert each case into the codebook of this editor's wrapper at the edit layer.

        The first apply wraps the down_proj; its restore() takes the wrapper (and the hook) out.
        An apply on a model whose layer already carries this editor's wrapper (an earlier apply
        not restored: lifelong editing) extends that codebook instead of nesting a second
        wrapper, and its restore() undoes exactly what it did (entries added, radii grown or
        split, keys moved, values retrained). Restore such results last-in-first-out (a restore
        out of that order raises); restoring the first one removes the wrapper and every later edit.
        """
        hp = self.hparams
        layer = self.edit_layer(model)
        path = arch_of(model).path("down_proj", layer)
        wrapper = self._own_wrapper(model, path)
        change = None
        if wrapper is None:
            book = Codebook(eps_init=hp.eps, dist_fn=hp.dist_fn, expand=hp.eps_expand)
            wrapper = self._attach(model, path, book, result)
        else:
            change = wrapper.codebook.checkpoint()
            book = wrapper.codebook
            result.undo.append(lambda: book.rollback(change))
        info: dict[str, list] = {"keys": [], "ops": [], "nearest": [], "losses": [], "steps": []}
        wrapper.enabled = False  # inserts see (and train against) the unedited layer output
        try:
            for case in cases:
                for name, v in zip(info, self._insert(model, tok, wrapper, layer, path, case, change)):
                    info[name].append(v)
        finally:
            wrapper.enabled = True
        result.info = {
            "layer": layer,
            "keys": torch.stack(info["keys"]).cpu(),  # (N, d_key) keys as inserted
            "ops": info["ops"],
            "nearest": info["nearest"],
            "losses": info["losses"],
            "steps": info["steps"],  # optimisation steps each value took (of n_iter)
            "codebook": book,
            "continued": change is not None,
        }

    def _own_wrapper(self, model: nn.Module, path: str) -> GraceLayer | None:
        """The wrapper this editor put at `path`, or None when the plain layer is there.

        A GRACE-family wrapper of another editor instance (another key space, e.g. another
        encoder) or of other codebook settings is refused rather than nested or extended.
        """
        module = model.get_submodule(path)
        if not isinstance(module, GraceLayer):
            return None
        hp, book = self.hparams, module.codebook
        ours = getattr(module.key_fn, "__self__", None) is self
        same = (module.decode, book.eps_init, book.dist_fn, book.expand) == (
            DECODE[hp.replacement], hp.eps, hp.dist_fn, hp.eps_expand,
        )  # fmt: skip
        if not (ours and same):
            why = "another editor instance" if not ours else "other codebook settings"
            raise InputError(
                f"{path} already carries a GRACE-family edit made by {why}; restore that edit first, or "
                f"keep applying with the editor (and hparams) that made it"
            )
        return module

    def _attach(self, model: nn.Module, path: str, book: Codebook, result: EditResult) -> GraceLayer:
        """Wrap the down_proj at `path` around `book`; `result` gets the undo that takes it out."""
        wrapper = GraceLayer(model.get_submodule(path), book, self.keys, DECODE[self.hparams.replacement])
        result.undo.append(replace_module(model, path, wrapper))
        result.undo.append(model.register_forward_pre_hook(wrapper.observe, with_kwargs=True).remove)
        return wrapper

    def _insert(self, model, tok, wrapper: GraceLayer, layer: int, path: str, case: EditRequest, change=None):
        """Insert one case's key, then train the value of the entry it landed in (recorded in `change`)."""
        hp = self.hparams
        device = next(model.parameters()).device
        batch = edit_batch(tok, [case.prompt], [case.target], device=device)
        p = batch["prompt_lens"][0]
        n_target = batch["input_ids"].shape[1] - p
        steps = n_target if hp.replacement == "steps" else 1
        block = arch_of(model).blocks(model)[layer]
        # one pass up to block `layer`: its input (the frozen hidden state) and down_proj's in/out
        with (
            torch.no_grad(),
            Trace(model, path, retain_input=True, detach=True) as dp,
            Trace(model, block, retain_input=True, retain_output=False, detach=True, stop=True) as blk,
        ):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        prompt_mask = torch.arange(batch["input_ids"].shape[1], device=device)[None] < p
        with torch.no_grad():  # a trained key encoder is not trained here
            key = self.insert_key(model, tok, case, dp.input, prompt_mask)
        if hp.val_init == "warm":
            init = dp.output[0, p - 1 : p - 1 + steps].float()
        else:
            gen = torch.Generator().manual_seed(hp.seed)
            init = torch.rand(steps, dp.output.shape[-1], generator=gen).to(device)
        book = wrapper.codebook
        ins = book.insert(key, case.target, init, radius=self.entry_radius(key), change=change)
        value, loss, steps = train_value(model, layer, path, blk.input, batch, book.values[ins.index], self.hparams)
        book.set_value(ins.index, value, change)
        companions = self.companion_keys(model, tok, case)
        for extra in [] if companions is None else companions:
            radius = self.entry_radius(extra)  # None: the codebook's eps, as insert reads it
            book.add(extra, book.eps_init if radius is None else radius, case.target, value, change)
        log.debug("GRACE %s: %s (nearest %.3g), loss %.4f after %d steps", case.case_id, ins.op,
                  ins.distance or -1, loss, steps)
        return key.detach(), ins.op, ins.distance, loss, steps

    # --- the edit as data (fix files) -----------------------------------------------------------
    def edit_state(self, model: nn.Module) -> EditState:
        """The codebook of this editor's wrapper (every apply not restored): `codebook.*` tensors,
        its labels and settings in meta with the edit layer. Subclasses add their key encoder."""
        layer = self.edit_layer(model)
        path = arch_of(model).path("down_proj", layer)
        if not isinstance(model.get_submodule(path), GraceLayer):
            raise NotSavableError(
                f"{self.name}: {path} carries no GRACE-family edit to save; apply fixes first"
            )
        tensors, meta = self._own_wrapper(model, path).codebook.state()
        return EditState({f"codebook.{k}": v for k, v in tensors.items()}, {"layer": layer, "codebook": meta})

    def key_width(self, model: nn.Module) -> int:
        """Width of this editor's keys (GRACE: the down_proj input, d_mlp)."""
        return arch_of(model).mlp_dim(model, self.edit_layer(model))

    def _load_edit(self, model: nn.Module, tok: Any, state: EditState, result: EditResult) -> None:
        """Wrap the edit layer around the saved codebook; keys come from `self.keys`, as after apply.

        Every tensor must be the codebook's, of this model's widths, with these hparams' settings.
        """
        hp, arch = self.hparams, arch_of(model)
        layer = self.edit_layer(model)
        path = arch.path("down_proj", layer)
        if isinstance(model.get_submodule(path), GraceLayer):
            raise InputError(
                f"{path} already carries a GRACE-family edit; load fixes into the unedited model"
            )
        if state.meta.get("layer") != layer:
            raise IntegrityError(
                f"the saved edit is at layer {state.meta.get('layer')}, {self.name} edits {layer}"
            )
        unknown = sorted(k for k in state.tensors if not k.startswith("codebook."))
        if unknown:
            raise IntegrityError(
                f"the saved edit holds {unknown[:5]}, which are not part of a {self.name} edit"
            )
        tensors = {k.removeprefix("codebook."): v for k, v in state.tensors.items()}
        device = next(model.parameters()).device
        try:
            book = Codebook.from_state(tensors, state.meta.get("codebook") or {}, device)
        except ValueError as err:
            raise IntegrityError(f"the saved {self.name} codebook does not fit: {err}") from None
        d_out = arch.weight_out_in(arch.down_proj_module(model, layer)).shape[0]
        widths = (None, None) if book.keys is None else (book.keys.shape[1], book.values[0].shape[-1])
        if book.keys is not None and widths != (self.key_width(model), d_out):
            raise IntegrityError(
                f"the saved keys and values are {widths[0]} and {widths[1]} wide; {self.name} on this model "
                f"needs {self.key_width(model)} and {d_out}"
            )
        if (book.eps_init, book.dist_fn, book.expand) != (hp.eps, hp.dist_fn, hp.eps_expand):
            raise IntegrityError(f"the saved codebook's settings differ from the edit's hparams ({book!r})")
        self._attach(model, path, book, result)
