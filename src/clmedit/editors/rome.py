"""ROME: a rank-one edit of one layer's down projection (Meng et al., 2022), as the study ran it.

For each case in turn, over the prompt alone and behind 5 short generated contexts (the
study's code; locate.keys.with_contexts):
  1. k* = input of down_proj in layer l at the prompt's last token          (locate.keys)
     k_bar = that key averaged over the prompt alone and the 5 prefixed prompts
  2. v* = W k* + d, with one d added at the edit token of all 6 texts and optimised so the
     model then says the target after each of them (mean NLL)              (locate.values)
  3. W <- W + (v* - W k*) (C^-1 k_bar)^T / (k*^T C^-1 k_bar)                  (locate.solve)
so that (W + dW) k* = v* exactly and the update points along the key of the texts d was fitted
on. The study used C = I (no covariance adjustment); set mom2_adjustment to weigh by the
code-corpus statistics instead, and context_keys=False for the prompt alone (k_bar = k*).
"""

from __future__ import annotations

from pydantic import Field

from clmedit.editors.base import Editor, EditResult, backup_weights
from clmedit.locate.keys import averaged_keys, cached_prefixes, compute_keys
from clmedit.locate.params import LocateHParams
from clmedit.locate.solve import add_to_down_proj, rank_one_update
from clmedit.locate.stats import layer_stats
from clmedit.locate.values import optimize_values, site_path
from clmedit.models.arch import arch_of


class RomeHParams(LocateHParams):
    layers: list[int] = Field(default_factory=lambda: [5], description="the one edited layer (of 32)")
    mom2_adjustment: bool = Field(False, description="the study's ROME: C = I")


class Rome(Editor):
    name = "rome"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = RomeHParams
    APPLY_SECONDS = {"cnle": 30.3, "csne": 85.8}

    def __init__(self, hparams: RomeHParams | None = None):
        super().__init__(hparams)
        self._prefixes: dict[str, list[str]] = {}  # model name -> context prefixes, generated once

    def prefixes(self, model, tok) -> list[str]:
        """The context prefixes of the value and the key ([] with context_keys=False), cached per model."""
        return cached_prefixes(self._prefixes, model, tok) if self.hparams.context_keys else []

    def prepare(self, model, tok) -> None:
        """Generate the context prefixes once, outside the timed apply."""
        self.prefixes(model, tok)

    def edited_layers(self, model) -> list[int]:
        return self.hparams.layers_for(self.hparams.layers, arch_of(model).num_layers(model))

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        """Apply the cases one after another, each a rank-one update of the same down_proj.

        Invariant: only that weight changes; EditResult.restore() writes back its bitwise copy
        (also when a later case fails: the base class then runs the undo).
        """
        hp, arch = self.hparams, arch_of(model)
        if len(hp.layers) != 1:
            raise ValueError(f"ROME edits one layer; got layers={hp.layers} (use memit for several)")
        layer = hp.layer_for(hp.layers[0], arch.num_layers(model))
        site = ("down_proj", layer)
        path = site_path(arch, site)
        cov = None
        if hp.mom2_adjustment:
            cov = layer_stats(model, tok, [layer], hp.stats_corpus, hp.stats_samples, hp.stats_seq_len)[layer]
        result.undo.append(backup_weights({path: arch.down_proj_module(model, layer).weight}))
        nll, steps = [], []
        prefixes = self.prefixes(model, tok)
        for case in cases:
            values = optimize_values(
                model, tok, [case.prompt], [case.target], [site], hp.value_params(), prefixes
            )
            key = compute_keys(model, tok, [case.prompt], [layer])[layer][0]
            mean = averaged_keys(model, tok, [case.prompt], layer, prefixes)[0] if prefixes else None
            # v* - W k* is exactly the optimised delta: init is W k* (+ bias) at the same token
            add_to_down_proj(model, layer, rank_one_update(key, values.delta[path][0], cov, mean))
            nll += values.nll
            steps += values.steps
        result.info = {"layer": layer, "value_nll": nll, "value_steps": steps}
