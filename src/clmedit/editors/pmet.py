"""PMET: MEMIT with separate attention and FFN targets; only the FFN (down_proj) weights change.

The value optimisation adds one delta to the attention output and one to the MLP output of the
last edited layer, jointly. The attention delta soaks up the part of the change that belongs
to attention, so the MLP target h_mlp + d_mlp is the FFN's share alone; that target is then
spread over the layers' down projections as in MEMIT (locate.solve.spread_over_layers), with
the study's code's two differences: layer i takes resid / sqrt(L - i) (not / (L - i)), and the
NLL weight drops to 0.1 once the target is the argmax (locate.values, `dynamic_nll`).
"""

from __future__ import annotations

from pydantic import Field

from clmedit.editors.memit import Memit, MemitHParams
from clmedit.locate.values import Site


class PmetHParams(MemitHParams):
    steps: int = Field(30, ge=1, description="Adam steps [v_num_grad_steps]")
    dynamic_nll: bool = Field(True, description="NLL weight 0.1x once the target is the argmax (PMET's)")


class Pmet(Memit):
    name = "pmet"
    HParams = PmetHParams
    APPLY_SECONDS = {"cnle": 35.6, "csne": 100.0}
    resid_split = "sqrt"

    def value_sites(self, layers: list[int]) -> list[Site]:
        return [("attn", layers[-1]), ("mlp", layers[-1])]

    def spread_site(self, layers: list[int]) -> Site:
        return ("mlp", layers[-1])
