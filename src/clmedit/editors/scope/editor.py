"""SCOPE (ours): A-GRACE's keys, trained harder, and a radius per entry fitted to what is known near it.

A-GRACE generalises to rephrases but lets neighbours in: one radius serves every entry, and the
study's neighbours are, by construction, the inputs nearest to the edit. SCOPE keeps A-GRACE's key
(a contrastive encoder of the mean prompt activation) and changes three things, each an hparam
that an ablation turns off:

1. Hard negatives (`hard_negatives`): the encoder also learns to push every training prompt away
   from its most similar other training prompts, not only from its five neighbours.
2. Rewritten neighbours (`augment`): every training neighbour and its rewrite by the build's own
   offline rewriter (CNLE: rule rewording; CSNE: identifier renaming; data.augment) are one more
   positive pair, so the encoder sees six examples of what a rewording does per case, not one.
3. Scoped entries (`use_bank`): a new entry answers within min(R, gamma * b), b being the distance
   from its key to the nearest known non-matching key (the encoded training prompts, rephrases and
   neighbours, kept with the encoder as the "bank"). R and gamma are chosen on held-out training
   cases: those maximising rephrases inside plus cases keeping every neighbour out, or, with
   `kept_target`, the widest scopes that keep every neighbour out for that share of them (fit.py).
   A crowded region of key space gets small scopes, an isolated key a wide one. Validation is
   scored as the runner scores the test fold (`honest_validation`): no probe of a validation
   case is a known key or a negative, and a neighbour it lost to the outer protocol counts as
   out only at the rate its observed ones are.
4. Rewrite keys (`edit_rewrites`, CSNE): an edit also inserts the keys of a few rewrites of its own
   prompt (the build's identifier renaming with other names), each a scoped ball with the edit's
   value. What one rewording does to a key is not a sphere around it; a few sampled rewordings
   cover it better than one wider ball, which would also take in the neighbours that differ from
   the edited function by one called name. The scope is chosen on validation with the same balls.
   CNLE takes none: its rule rewording is deterministic and is the build's rephrase itself.
5. Unprobed inputs (`unprobed_limit`, off by default): inputs of the same source that no case is
   scored on (the build writes them beside the cases, data.unprobed; the runner hands `fit` those
   that are no probe of the test fold) join the hard negatives' pool and the bank, so what is known
   near an edit is not only the few training neighbours the outer protocol leaves. Measured, it did
   not raise specificity and lowered generalization on CoNaLa-built CNLE (README), so it is opt-in.

Values, lookup and replacement are GRACE's; an edit costs GRACE's insert plus one prompt forward
(the insert key), one batched forward of its rewrites (their keys) and a distance to the bank per key. `fixed_radius` fixes R (GRACE's 1.0, say) instead of
choosing it. Every choice is made on training cases; the test half is never seen.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_file

from clmedit.data.unprobed import unprobed_prompts
from clmedit.editors.agrace.editor import AGrace, AGraceHParams, TrainingFeatures
from clmedit.editors.agrace.encoder import save_encoder
from clmedit.editors.agrace.features import Pool, cached_prompt_features
from clmedit.editors.agrace.training import Positives, holdout, train_candidate
from clmedit.editors.base import EditResult, EditState
from clmedit.editors.scope.fit import (
    GAMMAS,
    Known,
    Scope,
    choose_scope,
    hard_negatives,
    nearest_known,
    rank,
    unprobed_rows,
    validation_distances,
)
from clmedit.editors.scope.rewrites import neighbour_rewrites, prompt_rewrites, stack_rewrites
from clmedit.errors import IntegrityError
from clmedit.files import atomic_save_tensors, atomic_write_text
from clmedit.locate.keys import key_distance

log = logging.getLogger(__name__)
BANK, SCOPE = "bank.safetensors", "scope.json"
MIN_SCOPE = 1e-3  # a prompt must match its own entry despite padded vs unpadded numerics


class ScopeHParams(AGraceHParams):
    """A-GRACE's hparams and SCOPE's own."""

    hard_negatives: int = Field(
        20, ge=0, description="most similar other training prompts per prompt as negatives"
    )
    key_pool: Pool | None = Field(
        None, description="pooling of the prompt's down_proj inputs the encoder reads; None: by task"
    )
    key_pool_cnle: Pool = Field("mean", description="key_pool for NL->code cases")
    key_pool_csne: Pool = Field("mean+last", description="key_pool for code->NL cases (mean and last token)")
    augment: bool = Field(
        True, description="train on every training neighbour and its pipeline rewrite as positives too"
    )
    use_bank: bool = Field(True, description="scope each entry by its distance to known non-matching keys")
    edit_rewrites: int | None = Field(
        None, ge=0, description="rewrites of an edited prompt whose keys join its entry; None: by task"
    )
    edit_rewrites_cnle: int = Field(
        0, ge=0, description="edit_rewrites for NL->code (0: the rule rewording is the build's rephrase)"
    )
    edit_rewrites_csne: int = Field(4, ge=0, description="edit_rewrites for code->NL (identifier renamings)")
    kept_target: float | None = Field(
        None, gt=0, le=1, description="share of validation cases to keep all neighbours out; None: max inside + kept"
    )  # fmt: skip
    fixed_radius: float | None = Field(
        None, gt=0, description="R fixed (ablation) instead of chosen on validation"
    )
    unprobed_limit: int = Field(
        0, ge=0, description="at most this many of the data's unprobed inputs (a seeded sample) join the "
        "hard negatives' pool and the bank; 0 (default: it did not help, README): none",
    )  # fmt: skip
    honest_validation: bool = Field(
        True, description="validate as the runner tests: no probe of a validation case in its bank or negatives, "
        "missing neighbours counted at the observed rate",
    )  # fmt: skip


class ScopeEditor(AGrace):
    """GRACE keyed by a contrastive encoder, with hard negatives and per-entry scopes."""

    name = "scope"
    HParams = ScopeHParams
    APPLY_SECONDS = {"cnle": 0.5, "csne": 1.7}  # measured: see AGrace.FIT_SECONDS

    def pool_for(self, cases: list) -> Pool:
        """`key_pool`, or by task: the mean for NL intents, mean+last for code (measured, README)."""
        hp = self.hparams
        if hp.key_pool is not None:
            return hp.key_pool
        return hp.key_pool_csne if {c.task for c in cases} == {"csne"} else hp.key_pool_cnle

    def reads(self, pool: str) -> bool:
        return self.hparams.key_pool in (None, pool)

    def __init__(self, hparams: ScopeHParams | None = None):
        self.bank: torch.Tensor | None = None
        self.scope: Scope | None = None
        super().__init__(hparams)

    # --- training -------------------------------------------------------------------------------
    def fit(self, model, tok, train_cases, unprobed: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
        """Train the encoder (every initial scale x selection seed) and choose the scope on validation.

        `unprobed`: inputs no case it will be scored on has as a probe (the runner's `data.unprobed`,
        filtered for the test fold); up to `unprobed_limit` of them join the hard-negative pool and
        the bank, so a scope knows more of what lies near an edit without seeing what is scored.
        """
        self.hparams = hp = self.hparams.override("fit arguments", **kwargs)
        data = self.training_features(model, tok, train_cases)
        texts, corpus = self.unprobed_features(model, tok, data, unprobed)
        extra = self.rewritten_neighbours(model, tok, data) if hp.augment else None
        expected = max(len(c.neighbours) for c in data.cases) if hp.honest_validation else None
        rewrites = self.rewrite_features(model, tok, data)
        margin = data.config.meta["margin"]
        seeds = [hp.seed + k for k in range(hp.enc_selection_seeds)]
        gammas = GAMMAS if hp.use_bank else (math.inf,)
        best: tuple[tuple, Any, Scope] | None = None
        candidates = []
        for fraction in hp.enc_init_pos_fractions or (None,):
            runs, parts = [], []
            for seed in seeds:
                val, train = holdout(len(data.anchor), hp.enc_val_fraction, seed)
                known = unprobed_rows(data, val, texts) if hp.honest_validation else None
                negatives = self._negatives(data, train, val, known, corpus)
                encoder, _, _ = train_candidate(data.anchor, data.positive, negatives, fraction, seed, hp,
                                                margin, hp.eps, data.config, self._known(extra, known))  # fmt: skip
                runs.append(encoder)
                parts.append(validation_distances(encoder, data, val, train, rewrites, known, corpus))
            pos, nbs, bank = (torch.cat([p[i] for p in parts]) for i in range(3))
            scope = choose_scope(pos, nbs, bank, hp.kept_target, gammas, hp.fixed_radius, expected)
            candidates.append({"init_pos_fraction": fraction, **asdict(scope)})
            log.info("scope init %s: R %.3g gamma %s -> inside %.2f kept %.2f (%d validation cases)",
                     fraction, scope.radius, scope.gamma, scope.inside, scope.kept, scope.cases)  # fmt: skip
            score = rank(scope.inside, scope.kept, hp.kept_target)
            if best is None or score > best[0]:
                best = (score, runs[0], scope)
        assert best is not None
        _, self.encoder, self.scope = best
        with torch.no_grad():
            self.bank = self.encoder(
                torch.cat([data.anchor, data.positive, data.neighbours, corpus])
            ).detach()
        self.encoder.to(next(model.parameters()).device)
        data.config.meta.update(scope=asdict(self.scope), candidates=candidates, unprobed=len(texts))
        return {
            "scope": asdict(self.scope),
            "candidates": candidates,
            "bank": len(self.bank),
            "unprobed": len(texts),
        }

    def unprobed_features(
        self, model, tok, data: TrainingFeatures, unprobed: Sequence[str]
    ) -> tuple[list[str], torch.Tensor]:
        """Up to `unprobed_limit` of the `unprobed` texts (a seeded sample, in their order) that are
        no training input, and their features (C, d_in); none with `unprobed_limit` 0."""
        texts = unprobed_prompts(unprobed, data.cases)  # a training input is known already
        limit = self.hparams.unprobed_limit
        if len(texts) > limit:
            keep = sorted(random.Random(self.hparams.seed).sample(range(len(texts)), limit))
            texts = [texts[i] for i in keep]
        if not texts:
            return [], data.anchor[:0]
        feats = cached_prompt_features(
            model, tok, texts, self.edit_layer(model), data.config.pool, cache=self.hparams.feature_cache
        )
        log.info("%s: %d unprobed inputs join the negatives' pool and the bank", self.name, len(texts))
        return texts, feats.to(data.anchor.dtype)

    def rewritten_neighbours(
        self, model, tok, data: TrainingFeatures
    ) -> tuple[Positives, torch.Tensor] | None:
        """(neighbour, its rewrite) feature pairs of every training case's neighbours, owned by the
        case, and the row of data.neighbours each comes from: rewritten the way the build makes
        rephrases (data.augment), so the encoder sees many more examples of what a rewording does
        to a key than one rephrase per case."""
        found = neighbour_rewrites(data.cases, self.hparams.seed)
        if not found:
            return None
        layer, hp = self.edit_layer(model), self.hparams
        feats = cached_prompt_features(
            model, tok, [text for _, _, text in found], layer, data.config.pool, cache=hp.feature_cache
        )
        owner, rows = torch.tensor([i for i, _, _ in found]), torch.tensor([k for _, k, _ in found])
        log.info("%s: %d training neighbours rewritten as extra positives", self.name, len(found))
        return (data.neighbours[rows], feats, owner), rows

    def prompt_rewrites(self, task: str, prompt: str) -> list[str]:
        """Up to `edit_rewrites` distinct rewrites of one formatted prompt (rewrites.prompt_rewrites)."""
        return prompt_rewrites(self.hparams, task, prompt)

    def rewrite_features(
        self, model, tok, data: TrainingFeatures
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Features (N, J, d_in) of every training prompt's rewrites and which exist (N, J), for
        choosing the scope as edits will use it: one ball per key, the prompt's and its rewrites'."""
        per_case = [self.prompt_rewrites(c.task, c.prompt) for c in data.cases]
        width = max(map(len, per_case), default=0)
        if width == 0:
            return None
        texts = [t for texts in per_case for t in texts]
        feats = cached_prompt_features(
            model, tok, texts, self.edit_layer(model), data.config.pool, cache=self.hparams.feature_cache
        )
        out, exists = stack_rewrites([len(mine) for mine in per_case], feats)
        log.info("%s: %d rewrites of %d training prompts for the scope", self.name, len(texts), len(per_case))
        return out, exists

    def _negatives(
        self, data: TrainingFeatures, train: torch.Tensor, val: torch.Tensor, known: Known | None,
        corpus: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Every neighbour, plus each prompt's most similar training-split prompts and unprobed
        texts (`corpus`, features) as hard negatives; with `known`, none that is a probe of a
        validation case, but the validation cases' own (which only score the validation loss)."""
        pool, rows = train, torch.ones(len(data.owner), dtype=torch.bool)
        if known is not None:
            pool, rows = train[known.anchor[train]], known.neighbours | torch.isin(data.owner, val)
            corpus = corpus[known.unprobed] if len(corpus) else corpus
        index, owner = hard_negatives(
            data.anchor, pool, self.hparams.hard_negatives, corpus if len(corpus) else None
        )
        candidates = torch.cat([data.anchor, corpus])
        return torch.cat([data.neighbours[rows], candidates[index]]), torch.cat([data.owner[rows], owner])

    @staticmethod
    def _known(extra: tuple[Positives, torch.Tensor] | None, known: Known | None) -> Positives | None:
        """The extra positive pairs whose neighbour is `known` (all without it)."""
        if extra is None:
            return None
        (x, rewritten, owner), rows = extra
        if known is None:
            return x, rewritten, owner
        keep = known.neighbours[rows]
        return x[keep], rewritten[keep], owner[keep]

    # --- the scope of a new entry ---------------------------------------------------------------------
    def insert_key(self, model, tok, case, inputs, prompt_mask) -> torch.Tensor:
        """The prompt's key computed as its own prefill computes it (the prompt alone): a scope can
        be far smaller than GRACE's radius, smaller than the rounding between a prompt's key inside
        the edit sequence and alone (bfloat16), and the prompt must still match its own entry."""
        return self.prompt_keys(model, tok, [case.prompt])[0]

    def companion_keys(self, model, tok, case) -> torch.Tensor | None:
        """Keys of the prompt's rewrites: each one more ball answering with the edit's value."""
        texts = self.prompt_rewrites(case.task, case.prompt)
        return self.prompt_keys(model, tok, texts) if texts else None

    def entry_radius(self, key: torch.Tensor) -> float:
        if self.scope is None or self.bank is None:
            raise RuntimeError(f"{self.name} has no scope: call fit(model, tok, train_cases) or load(dir)")
        b = nearest_known(key.detach().float().reshape(1, -1).cpu(), self.bank)
        return max(MIN_SCOPE, float(self.scope.of(b)[0]))

    def key_record(self, model, tok, case) -> dict[str, Any]:
        record = super().key_record(model, tok, case)
        record["distances"]["radius"] = self.entry_radius(self.prompt_keys(model, tok, [case.prompt])[0])
        rewrites = self.companion_keys(model, tok, case)
        if rewrites is not None:  # each rewrite's ball: what it covers and what it keeps out
            others = self.prompt_keys(model, tok, [case.rephrase, *(n.prompt for n in case.neighbours)])
            d = key_distance(others.float().cpu(), rewrites.float().cpu(), self.hparams.dist_fn)  # (1+K, J)
            record["distances"]["rewrites"] = [
                {"rephrase": float(d[0, j]), "neighbours": d[1:, j].tolist(), "radius": self.entry_radius(k)}
                for j, k in enumerate(rewrites)
            ]
        return record

    # --- the edit as data: A-GRACE's, plus the bank and scope that size further entries ------------
    def edit_state(self, model) -> EditState:
        state = super().edit_state(model)
        if self.bank is not None and self.scope is not None:
            state.tensors["bank"] = self.bank.detach().to("cpu", copy=True).contiguous()
            state.meta["scope"] = asdict(self.scope)
        return state

    def _load_edit(self, model, tok, state: EditState, result: EditResult) -> None:
        """A-GRACE's load, then the bank and scope (so applying more fixes sizes entries as before)."""
        bank = state.tensors.get("bank")
        rest = EditState({k: v for k, v in state.tensors.items() if k != "bank"}, state.meta)
        super()._load_edit(model, tok, rest, result)
        if bank is None:
            return
        try:
            scope = Scope(**state.meta["scope"])
        except (KeyError, TypeError) as err:
            raise IntegrityError(
                f"the saved {self.name} edit has a bank but no valid scope ({err})"
            ) from None
        if bank.ndim != 2 or bank.shape[1] != self.encoder.config.d_out:
            raise IntegrityError(f"the saved bank {tuple(bank.shape)} does not fit the encoder")

        def put_back(bank: torch.Tensor | None = self.bank, scope: Scope | None = self.scope) -> None:
            self.bank, self.scope = bank, scope

        result.undo.append(put_back)
        self.bank, self.scope = bank.float(), scope

    # --- the trained part: encoder, bank, scope ---------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        if self.encoder is None or self.bank is None or self.scope is None:
            raise RuntimeError(f"{self.name}: nothing to save; call fit() first")
        save_encoder(self.encoder, directory)
        atomic_save_tensors(Path(directory) / BANK, {"bank": self.bank.contiguous()})
        atomic_write_text(Path(directory) / SCOPE, json.dumps(asdict(self.scope), indent=2))

    def load(self, directory: str | Path) -> None:
        super().load(directory)
        directory = Path(directory)
        if not (directory / BANK).is_file() or not (directory / SCOPE).is_file():
            raise FileNotFoundError(
                f"{directory} holds no {BANK}/{SCOPE}; train one with `clmedit train --editor scope`"
            )
        bank = load_file(str(directory / BANK))["bank"]
        if bank.ndim != 2 or bank.shape[1] != self.encoder.config.d_out:
            raise ValueError(f"{directory / BANK}: keys of width {tuple(bank.shape)} do not fit the encoder")
        self.bank = bank.float()
        self.scope = Scope(**json.loads((directory / SCOPE).read_text()))
