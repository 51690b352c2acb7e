"""The study's evaluation protocol for one edit case (DESIGN.md, "Evaluation protocol").

- Effectiveness / generalization: greedy decoding of the prompt / rephrase with max_new_tokens =
  len(tok.encode(target)) without special tokens (models.text.generation_budget); the stripped output vs the target: EM, BLEU, ROUGE-L.
  That budget can be shorter than the target's tokens after the prompt, so EM cannot be 1 there: each
  case records those checks (`budget_short`). `budget="in-context"` gives each text the target's length
  after it instead (models.text.in_context_budget); the study's rule stays the default.
- Specificity: greedy 16 tokens for each neighbour; reference = the unedited model's own 16-token
  output (cached in the case per model name). EM = 1 iff all match; BLEU = corpus BLEU over the
  pairs; ROUGE-L = their mean.
- Fluency: 64 tokens sampled (top-k 5) from prompt and rephrase; mean n-gram entropy of the two.

Three generate calls per case, each one batch: [prompt, rephrase], the neighbours, fluency (with the
in-context budget, prompt and rephrase are two calls when their budgets differ). `evaluation="reference"`
(the default) runs them through `model.generate`; "fast" through eval.decode (the same tokens; it saves
generate's bookkeeping and one prefill, a few per cent on the CPU it was measured on).
Scores are in [0, 1] per case; `summarise` reports means x100 (the study's convention).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from functools import partial
from typing import Literal

from clmedit.data.schema import EditCase
from clmedit.eval.decode import CaseDecoder
from clmedit.eval.generate import generate
from clmedit.eval.metrics import bleu, exact_match, ngram_entropy, rouge_l
from clmedit.eval.scores import CaseOutputs, CaseScores, Triple, summarise  # noqa: F401 (summarise: public here too)
from clmedit.models.text import generation_budget, in_context_budget
from clmedit.models.text import model_name as name_of

log = logging.getLogger(__name__)

NEIGHBOUR_TOKENS = 16  # specificity: new tokens per neighbour, for the reference and the edited model
FLUENCY_TOKENS = 64  # fluency: sampled tokens per text
FLUENCY_TOP_K = 5
Budget = Literal["study", "in-context"]
Evaluation = Literal["fast", "reference"]


def _pair(pred: str, ref: str) -> Triple:
    return Triple(em=exact_match(pred, ref), bleu=bleu([pred], [ref]), rouge_l=rouge_l(pred, ref))


def neighbour_refs(case: EditCase, model_name: str) -> list[str]:
    """The specificity references of `case` for `model_name`; a clear error when not computed yet."""
    missing = [i for i, n in enumerate(case.neighbours) if model_name not in n.answers]
    if missing:
        have = sorted({k for n in case.neighbours for k in n.answers})
        raise KeyError(
            f"case {case.case_id!r}: neighbours {missing} have no answer for model {model_name!r} "
            f"(answers exist for {have or 'no model'}); run fill_base_answers(model, tok, cases) with "
            f"the UNEDITED model before editing"
        )
    return [n.answers[model_name].strip() for n in case.neighbours]


def _target_outputs(gen, tok, case: EditCase, budget: Budget) -> tuple[list[str], list[str]]:
    """Greedy outputs on [prompt, rephrase] (stripped) and the checks whose budget is too short."""
    texts = [case.prompt, case.rephrase]
    needed = [in_context_budget(tok, text, case.target) for text in texts]
    given = [generation_budget(tok, case.target)] * 2 if budget == "study" else needed
    short = [check for check, g, n in zip(("effectiveness", "generalization"), given, needed) if g < n]
    if given[0] == given[1]:  # one batch (batched greedy == one at a time, so splitting changes nothing)
        out = gen(texts, given[0])
    else:
        out = [gen([text], g)[0] for text, g in zip(texts, given)]
    return [o.strip() for o in out], short


def evaluate_case(
    model, tok, case: EditCase, model_name: str | None = None, fluency: bool = True, seed: int = 0,
    budget: Budget = "study", evaluation: Evaluation = "reference",
) -> CaseScores:  # fmt: skip
    """Score the (edited) model on one case with the study's protocol. The model is not changed.

    `budget`: the generation budget of effectiveness and generalization (module docstring).
    `evaluation`: "fast" or "reference"; both give the same outputs (module docstring).
    """
    name = model_name or name_of(model)
    refs = neighbour_refs(case, name)  # fail before spending any generation time
    target = case.target.strip()
    if evaluation == "fast":
        gen = CaseDecoder(model, tok, reuse=[case.prompt, case.rephrase])
    else:
        gen = partial(generate, model, tok)
    edit_out, short = _target_outputs(gen, tok, case, budget)
    neigh_out = [o.strip() for o in gen([n.prompt for n in case.neighbours], NEIGHBOUR_TOKENS)]
    if neigh_out:
        specificity = Triple(
            em=float(all(exact_match(p, r) for p, r in zip(neigh_out, refs))),
            bleu=bleu(neigh_out, refs),
            rouge_l=statistics.fmean(rouge_l(p, r) for p, r in zip(neigh_out, refs)),
        )
    else:  # a case without neighbours has nothing to disturb
        specificity = Triple(em=1.0, bleu=1.0, rouge_l=1.0)
    flu_out: list[str] = []
    flu = None
    if fluency:
        flu_out = gen(
            [case.prompt, case.rephrase], FLUENCY_TOKENS, do_sample=True, top_k=FLUENCY_TOP_K, seed=seed
        )
        flu_out = [o.strip() for o in flu_out]
        flu = statistics.fmean(ngram_entropy(o) for o in flu_out)
    return CaseScores(
        case_id=case.case_id,
        effectiveness=_pair(edit_out[0], target),
        generalization=_pair(edit_out[1], target),
        specificity=specificity,
        fluency=flu,
        budget_short=short,
        outputs=CaseOutputs(prompt=edit_out[0], rephrase=edit_out[1], neighbours=neigh_out, fluency=flu_out),
    )


def fill_base_answers(
    model, tok, cases: Sequence[EditCase], model_name: str | None = None, batch_size: int = 32
) -> int:
    """Fill every missing neighbour answer with the model's greedy 16-token output (stripped).

    Call it with the UNEDITED model: these answers are the specificity references. Cases are
    changed in place; duplicated neighbour prompts are generated once. Returns how many answers
    were computed.
    """
    name = model_name or name_of(model)
    todo = [n for c in cases for n in c.neighbours if name not in n.answers]
    prompts = list(dict.fromkeys(n.prompt for n in todo))
    if not prompts:
        return 0
    log.info("computing %d base answers of %s (greedy, %d tokens)", len(prompts), name, NEIGHBOUR_TOKENS)
    outs = generate(model, tok, prompts, NEIGHBOUR_TOKENS, batch_size=batch_size, desc=f"base answers {name}")
    answer = {p: o.strip() for p, o in zip(prompts, outs)}
    for n in todo:
        n.answers[name] = answer[n.prompt]
    return len(prompts)
