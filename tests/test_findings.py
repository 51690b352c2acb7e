"""The findings F1-F6 on small synthetic run records whose verdicts are known: each holds, then fails."""

from __future__ import annotations

import pytest

from clmedit.report import findings as fd
from clmedit.results import CaseRecord
from clmedit.run.summary import row_facts, summarise_records

# (editor) -> cases with EM 1 out of N on (CSNE effectiveness, CNLE effectiveness, generalization, specificity)
HOLDING = {
    "none": (0, 0, 0, 10),
    "ft": (8, 1, 1, 5),
    "rome": (7, 3, 3, 0),
    "memit": (6, 2, 2, 0),
    "pmet": (6, 2, 2, 0),
    "malmen": (5, 1, 1, 1),
    "grace": (10, 10, 0, 10),
    "agrace": (10, 10, 8, 6),
    "scope": (10, 10, 8, 9),
}
SECONDS = {"malmen": 0.1}  # every other editor: 2.0 s per edit


def _summaries(grid: dict[str, tuple[int, int, int, int]], n: int = 10, seconds=None) -> list[dict]:
    """One summary per (task, editor) from n records: the first k cases of each check pass (EM 1)."""
    seconds = {**SECONDS, **(seconds or {})}
    out = []
    for editor, (csne, cnle, gen, spec) in grid.items():
        for task, eff in (("csne", csne), ("cnle", cnle)):
            recs = []
            for i in range(n):
                triple = [{"em": float(i < k), "bleu": 0.0, "rouge_l": 0.0} for k in (eff, gen, spec)]
                scores = dict(zip(("effectiveness", "generalization", "specificity"), triple))
                recs.append(CaseRecord.model_validate(
                    {"case_id": f"{task}-{i}", "task": task, "editor": editor, "model": "synthetic",
                     "scores": scores, "seconds": seconds.get(editor, 2.0), "peak_bytes": 0,
                     "resident_peak_bytes": 1000 * 2**20}))  # fmt: skip
            out.append({**summarise_records(recs), **row_facts(editor)})
    return out


def _verdicts(grid, **kwargs) -> dict[str, str]:
    return {f.key: f.verdict for f in fd.findings(_summaries(grid, **kwargs))}


def test_every_finding_holds_on_a_run_made_to_hold():
    assert _verdicts(HOLDING) == dict.fromkeys(("F1", "F2", "F3", "F4", "F5", "F6"), fd.HOLDS)


@pytest.mark.parametrize(
    "key, change, seconds",
    [
        (
            "F1",
            {"grace": (9, 10, 0, 10), "ft": (10, 1, 1, 5)},
            None,
        ),  # FT-L's CSNE effectiveness above GRACE's
        ("F2", {"rome": (7, 3, 3, 8)}, None),  # ROME keeps 80 of the unedited model's 100 specificity
        ("F3", {"rome": (7, 7, 3, 0)}, None),  # ROME loses nothing from CSNE to CNLE
        ("F4", {"agrace": (10, 10, 1, 6)}, None),  # generalization 0 -> 10: not 20 points
        ("F4", {"agrace": (10, 10, 8, 10), "scope": (10, 10, 9, 9)}, None),  # no specificity cost
        ("F5", {}, {"malmen": 3.0}),  # MALMEN slower than the rest
        ("F6", {"scope": (10, 10, 8, 5)}, None),  # SCOPE's specificity 50 < A-GRACE's weakest 60
    ],
)
def test_each_finding_fails_when_its_numbers_say_so(key, change, seconds):
    verdicts = _verdicts({**HOLDING, **change}, seconds=seconds)
    assert verdicts.pop(key) == fd.FAILS
    assert set(verdicts.values()) == {fd.HOLDS}  # the change touches this finding only


def test_a_tie_at_the_top_is_still_the_best():
    assert _verdicts({**HOLDING, "ft": (10, 1, 1, 5)})["F1"] == fd.HOLDS


def test_too_few_cases_and_not_run_are_said_plainly():
    few = _verdicts(HOLDING, n=4)  # 4 cases per run (k of 4 capped at 4): nothing can be told
    assert all(v.startswith(fd.FEW) for v in few.values())
    assert "fewer than 10 cases in 4 of the 4 runs it reads (4 each)" in few["F4"]
    assert "6 of the 6 runs it reads (4 each)" in few["F6"]
    assert (
        "lean to 'holds'" in few["F1"] and "lean to 'does not hold'" in few["F4"]
    )  # A-GRACE spec. 100 = GRACE's
    missing = _verdicts({e: v for e, v in HOLDING.items() if e not in ("scope", "malmen")})
    assert missing["F6"] == missing["F5"] == fd.NOT_RUN and missing["F1"] == fd.HOLDS
    partial = [s for s in _summaries(HOLDING) if (s["tasks"], s["editor"]) != (["csne"], "grace")]
    f1 = fd.findings(partial)[0]  # GRACE ran on CNLE only: F1 is told on CNLE
    assert f1.verdict == fd.HOLDS and [line[:5] for line in f1.evidence] == ["CNLE:"]


def test_memory_that_differs_much_fails_f5():
    summaries = _summaries(HOLDING)
    for s in summaries:
        if s["editor"] == "rome":
            s["cost"]["mean_resident_peak_bytes"] *= 2  # twice the others' resident peak
    assert {f.key: f.verdict for f in fd.findings(summaries)}["F5"] == fd.FAILS


def test_the_same_rules_on_the_published_models():
    found = {f.key: f for f in fd.findings(_summaries(HOLDING))}
    assert all(
        "published, CodeLlama-7B: holds" in " ".join(found[k].published) for k in ("F1", "F2", "F3", "F4")
    )
    # the paper's own CodeQwen CSNE row: FT-L's effectiveness EM 96.05 is above GRACE's 95.79
    codeqwen = next(line for line in found["F1"].published if "CodeQwen1.5-7B" in line)
    assert codeqwen.startswith("published, CodeQwen1.5-7B: does not hold") and "FT-L 96.0" in codeqwen
    assert any("MALMEN is the fastest" in line for line in found["F5"].published)  # Fig. 3 prints no numbers
    assert all("no SCOPE row" in line for line in found["F6"].published)
    md = fd.markdown(list(found.values()), "synthetic")
    assert "### F3: every editor but GRACE" in md and "decrease %: GRACE 0.0; FT-L 87.5" in md
    assert r"\item \textbf{F4}" in fd.latex(list(found.values()), "synthetic")
