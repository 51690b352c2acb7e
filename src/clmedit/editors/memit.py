"""MEMIT: many edits at once, spread over several layers' down projections (Meng et al., 2023).

  1. For every case, a target residual z* = h + d at the output of the last edited block,
     d optimised so the model says the target after the prompt alone and behind each of 5
     generated context prefixes (the study's code)                            (locate.values)
  2. For layers l_1 < ... < l_L in turn: keys K_i averaged over the same texts, remaining
     residual R_i = (z* - z) / (L - i) at the prompt alone,
     dW_i = R_i^T K_i (lambda C_i + K_i^T K_i)^-1                              (locate.solve)
with C_i = E[k k^T] over a code corpus (locate.stats) and lambda = mom2_weight (15000).
All cases of one apply are solved jointly. context_keys=False: the prompt alone throughout.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from clmedit.editors.base import Editor, EditResult, backup_weights
from clmedit.locate.keys import cached_prefixes
from clmedit.locate.params import DEFAULT_SAMPLES, LocateHParams
from clmedit.locate.solve import Split, spread_over_layers
from clmedit.locate.stats import layer_stats
from clmedit.locate.values import Site, optimize_values, site_path
from clmedit.models.arch import arch_of
from clmedit.models.text import model_name


class MemitHParams(LocateHParams):
    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], description="edited layers (of 32)")
    mom2_adjustment: bool = Field(True, description="weigh the update by the code-corpus statistics")


class Memit(Editor):
    name = "memit"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = MemitHParams
    APPLY_SECONDS = {"cnle": 29.4, "csne": 85.1}

    def once_seconds(self) -> float:
        return 120.0 * self.hparams.stats_samples / DEFAULT_SAMPLES  # the covariance statistics
    resid_split: Split = "linear"  # R_i = resid / (L - i); PMET: / sqrt(L - i)

    def __init__(self, hparams: MemitHParams | None = None):
        super().__init__(hparams)
        self._covs: dict[tuple[str, int], Any] = {}  # (model name, layer) -> C, kept across applies
        self._prefixes: dict[str, list[str]] = {}  # model name -> context prefixes, generated once

    def prefixes(self, model, tok) -> list[str]:
        """The context prefixes of the values and the keys ([] with context_keys=False), cached per model."""
        return cached_prefixes(self._prefixes, model, tok) if self.hparams.context_keys else []

    # PMET changes only where the targets are optimised and which one is spread.
    def value_sites(self, layers: list[int]) -> list[Site]:
        return [("block", layers[-1])]

    def spread_site(self, layers: list[int]) -> Site:
        return ("block", layers[-1])

    def layer_update(self, model) -> Any:
        """The per-layer solve of the spread, (layer, K, R) -> dW; None = MEMIT's least squares."""
        return None

    def edited_layers(self, model) -> list[int]:
        return self.hparams.layers_for(self.hparams.layers, arch_of(model).num_layers(model))

    def prepare(self, model, tok) -> None:
        """Generate the context prefixes and load or compute the covariance statistics of the
        edited layers (once per model), outside the timed apply."""
        hp = self.hparams
        self.prefixes(model, tok)
        if not hp.mom2_adjustment:
            return
        name = model_name(model)
        missing = [layer for layer in self.edited_layers(model) if (name, layer) not in self._covs]
        if missing:
            stats = layer_stats(model, tok, missing, hp.stats_corpus, hp.stats_samples, hp.stats_seq_len)
            self._covs.update({(name, layer): c for layer, c in stats.items()})

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        """Edit down_proj of every layer in `layers` so all cases hold together.

        Invariant: only those weights change; EditResult.restore() writes back their bitwise copies.
        """
        hp, arch = self.hparams, arch_of(model)
        layers = self.edited_layers(model)
        covs = {layer: self._covs.get((model_name(model), layer)) for layer in layers}
        prompts, targets = [c.prompt for c in cases], [c.target for c in cases]
        weights = {arch.path("down_proj", l): arch.down_proj_module(model, l).weight for l in layers}  # noqa: E741
        result.undo.append(backup_weights(weights))
        prefixes = self.prefixes(model, tok)
        values = optimize_values(
            model, tok, prompts, targets, self.value_sites(layers), hp.value_params(), prefixes
        )
        spread = site_path(arch, self.spread_site(layers))
        norms = spread_over_layers(
            model, tok, prompts, layers, spread, values.target(spread), covs, hp.mom2_weight,
            self.resid_split, update=self.layer_update(model), prefixes=prefixes,
        )  # fmt: skip
        result.info = {"layers": layers, "value_nll": values.nll, "value_steps": values.steps,
                       "resid_norms": norms}  # fmt: skip
