"""The study's findings F1-F5, and our F6, checked on a run's summaries, with the published numbers beside.

Each finding is a rule over a grid `(task, editor) -> {"metrics", "n", "cost"}` (metrics x100 as in
`summary.json`), so the same rule runs on the user's grid and on each published model's grid; the
rule's text is printed with the verdict. Verdicts on the user's run: "holds", "does not hold", "too
few cases to tell" (a run it reads scored fewer than MIN_CASES cases; what those cases lean to is
said), or "not run" (an editor it needs is missing). Pure: summaries in, text out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clmedit.report import escape
from clmedit.report import published as pub

MIN_CASES = 10  # fewer scored cases in a run a finding reads: too few to tell
NEAR = 5.0  # EM points: "near the unedited model's"
MUCH = 20.0  # percentage points: "loses much more" (Table V)
FACTOR = 5.0  # "an order of magnitude": at least 5x (log10 rounds to 1) ...
GAIN = 20.0  # ... and at least 20 EM points, so 0.1 -> 0.6 does not count
MEMORY_RATIO = 1.5  # "differs little": the largest resident peak at most 1.5x the smallest
TABLE4 = ("ft", "rome", "memit", "pmet", "malmen", "grace")
HOLDS, FAILS, FEW, NOT_RUN = "holds", "does not hold", "too few cases to tell", "not run"
SHORT = {"effectiveness": "eff.", "generalization": "gen.", "specificity": "spec."}

Grid = dict[tuple[str, str], dict[str, Any]]


@dataclass
class Check:
    """A rule's outcome on one grid: ok (None: not computable), the numbers, the runs it read."""

    ok: bool | None
    evidence: list[str] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Finding:
    key: str
    claim: str
    rule: str
    verdict: str
    evidence: list[str]
    published: list[str]


def grid_of(summaries: list[dict[str, Any]]) -> Grid:
    """Our summaries as a grid (published rows are left out)."""
    grid: Grid = {}
    for s in summaries:
        if s.get("published") or len(s.get("tasks") or []) != 1:
            continue
        n = int((s.get("counts") or {}).get("ok", 0))
        grid[(str(s["tasks"][0]).lower(), str(s.get("editor")))] = {"metrics": s.get("metrics") or {}, "n": n,
                                                                     "cost": s.get("cost") or {}, "label": s.get("label")}  # fmt: skip
    return grid


def _em(grid: Grid, task: str, editor: str, group: str) -> float | None:
    v = ((grid.get((task, editor)) or {}).get("metrics") or {}).get(group)
    return float(v["em"]) if isinstance(v, dict) and isinstance(v.get("em"), (int, float)) else None


def _tasks(grid: Grid) -> list[str]:
    return sorted({t for t, _ in grid})


def _name(grid: Grid, editor: str) -> str:
    """How the report shows `editor`: the label its run's summary carries (a published grid borrows
    ours, see `findings`), else its name."""
    return next((v["label"] for (_, e), v in grid.items() if e == editor and v.get("label")), editor)


def f1(grid: Grid) -> Check:
    """GRACE: best effectiveness and specificity of the Table IV editors; generalization near the unedited."""
    c = Check(True)
    for t in _tasks(grid):
        others = [e for e in TABLE4 if e != "grace" and _em(grid, t, e, "effectiveness") is not None]
        vals = {k: _em(grid, t, "grace", k) for k in ("effectiveness", "generalization", "specificity")}
        base = _em(grid, t, "none", "generalization")
        if None in vals.values() or base is None or not others:  # a task that did not run them all
            continue
        line, ok = [], True
        for group in ("effectiveness", "specificity"):
            best = max(others, key=lambda e: _em(grid, t, e, group) or 0.0)
            other = _em(grid, t, best, group) or 0.0
            ok &= vals[group] >= other
            line.append(f"{SHORT[group]} GRACE {vals[group]:.1f} vs best other {_name(grid, best)} {other:.1f}")
        ok &= abs(vals["generalization"] - base) <= NEAR
        line.append(f"gen. GRACE {vals['generalization']:.1f} vs unedited {base:.1f}")
        c.ok = bool(c.ok and ok)
        c.evidence.append(f"{t.upper()}: " + "; ".join(line))
        c.used += [(t, "grace"), (t, "none"), *((t, e) for e in others)]
    return c if c.used else Check(None, ["needs GRACE, the unedited row and another Table IV editor"])


def f2(grid: Grid) -> Check:
    """ROME, MEMIT, PMET: specificity EM at most half the unedited model's."""
    c = Check(True)
    for t in _tasks(grid):
        base = _em(grid, t, "none", "specificity")
        ran = [e for e in ("rome", "memit", "pmet") if _em(grid, t, e, "specificity") is not None]
        if base is None or not ran:
            continue
        c.ok = bool(c.ok and all((_em(grid, t, e, "specificity") or 0.0) <= base / 2 for e in ran))
        c.evidence.append(f"{t.upper()}: spec. EM unedited {base:.1f}; "
                          + ", ".join(f"{_name(grid, e)} {_em(grid, t, e, 'specificity'):.1f}" for e in ran))  # fmt: skip
        c.used += [(t, "none"), *((t, e) for e in ran)]
    return c if c.used else Check(None, ["needs the unedited row and ROME, MEMIT or PMET"])


def decrease(grid: Grid, editor: str) -> float | None:
    """Table V: (CSNE - CNLE) / CSNE x 100 of effectiveness EM; None without both or with CSNE at 0."""
    a, b = _em(grid, "csne", editor, "effectiveness"), _em(grid, "cnle", editor, "effectiveness")
    return None if a is None or b is None or a <= 0 else (a - b) / a * 100


def f3(grid: Grid) -> Check:
    """Every Table IV editor but GRACE: a decrease at least MUCH points above GRACE's."""
    g = decrease(grid, "grace")
    others = {e: decrease(grid, e) for e in TABLE4[:-1] if (("csne", e) in grid and ("cnle", e) in grid)}
    known = {e: d for e, d in others.items() if d is not None}
    if g is None or not known:
        return Check(
            None, ["needs GRACE and another Table IV editor on both tasks, with CSNE effectiveness above 0"]
        )
    line = f"decrease %: GRACE {g:.1f}; " + ", ".join(f"{_name(grid, e)} {d:.1f}" for e, d in known.items())
    skipped = [_name(grid, e) for e, d in others.items() if d is None]
    evidence = [line] + (
        [f"no decrease for {', '.join(skipped)} (CSNE effectiveness EM 0)"] if skipped else []
    )
    used = [(t, e) for e in ["grace", *known] for t in ("csne", "cnle")]
    return Check(all(d >= g + MUCH for d in known.values()), evidence, used)


def f4(grid: Grid) -> Check:
    """A-GRACE over GRACE, means over the tasks: generalization >= FACTOR x and +GAIN; specificity lower."""
    tasks = [t for t in _tasks(grid) if (t, "grace") in grid and (t, "agrace") in grid]
    if not tasks:
        return Check(None, ["needs GRACE and A-GRACE"])
    mean = {(e, k): statistics.fmean(_em(grid, t, e, k) or 0.0 for t in tasks)
            for e in ("grace", "agrace") for k in ("generalization", "specificity")}  # fmt: skip
    gg, ag = mean[("grace", "generalization")], mean[("agrace", "generalization")]
    gs, as_ = mean[("grace", "specificity")], mean[("agrace", "specificity")]
    ok = ag >= FACTOR * gg and ag - gg >= GAIN and as_ < gs
    ratio = f"{ag / gg:.1f}x" if gg > 0 else "from 0"
    evidence = [f"{t.upper()}: gen. GRACE {_em(grid, t, 'grace', 'generalization'):.1f} -> A-GRACE "
                f"{_em(grid, t, 'agrace', 'generalization'):.1f}; spec. {_em(grid, t, 'grace', 'specificity'):.1f}"
                f" -> {_em(grid, t, 'agrace', 'specificity'):.1f}" for t in tasks]  # fmt: skip
    evidence.append(
        f"mean over {len(tasks)} task(s): gen. {gg:.1f} -> {ag:.1f} ({ratio}); spec. {gs:.1f} -> {as_:.1f}"
    )
    return Check(ok, evidence, [(t, e) for t in tasks for e in ("grace", "agrace")])


def f5(grid: Grid) -> Check:
    """MALMEN has the lowest mean seconds per edit; resident peaks within MEMORY_RATIO of each other."""
    c = Check(True)
    for t in _tasks(grid):
        cost = {e: (grid.get((t, e)) or {}).get("cost") or {} for e in TABLE4}
        secs = {
            e: v["mean_seconds"] for e, v in cost.items() if isinstance(v.get("mean_seconds"), (int, float))
        }
        mem = {e: v["mean_resident_peak_bytes"] / 2**20 for e, v in cost.items()
               if isinstance(v.get("mean_resident_peak_bytes"), (int, float))}  # fmt: skip
        if "malmen" not in secs or len(secs) < 2 or not mem:
            continue
        fastest = min(secs, key=secs.get)
        ratio = max(mem.values()) / max(min(mem.values()), 1e-9)
        c.ok = bool(c.ok and fastest == "malmen" and ratio <= MEMORY_RATIO)
        c.evidence.append(f"{t.upper()}: s/edit " + ", ".join(f"{_name(grid, e)} {v:.2f}" for e, v in secs.items())
                          + f" (fastest: {_name(grid, fastest)}); resident peak {min(mem.values()):.0f}-"
                          f"{max(mem.values()):.0f} MiB ({ratio:.2f}x)")  # fmt: skip
        c.used += [(t, e) for e in secs]
    return c if c.used else Check(None, ["needs MALMEN, another Table IV editor and their recorded cost"])


def f6(grid: Grid) -> Check:
    """SCOPE's weakest of effectiveness, generalization and specificity EM above GRACE's and A-GRACE's."""
    c = Check(True)
    for t in _tasks(grid):
        worst = {}
        for e in ("grace", "agrace", "scope"):
            ems = {k: _em(grid, t, e, k) for k in ("effectiveness", "generalization", "specificity")}
            if None not in ems.values():
                k = min(ems, key=ems.get)
                worst[e] = (ems[k], k)
        if not worst:
            continue
        c.evidence.append(f"{t.upper()}: weakest EM " + ", ".join(f"{_name(grid, e)} {v:.1f} ({SHORT[k]})"
                                                                  for e, (v, k) in worst.items()))  # fmt: skip
        if len(worst) == 3:
            c.ok = bool(c.ok and worst["scope"][0] > max(worst["grace"][0], worst["agrace"][0]))
            c.used += [(t, e) for e in worst]
    return c if c.used else Check(None, c.evidence or ["needs SCOPE, GRACE and A-GRACE"])


RULES: list[tuple[str, str, str, Callable[[Grid], Check]]] = [
    ("F1", "GRACE has the best effectiveness and specificity, and generalization near the unedited model's",
     f"on every task, GRACE's effectiveness and specificity EM are the highest of FT-L, ROME, MEMIT, PMET, "
     f"MALMEN and GRACE, and its generalization EM is within {NEAR:g} points of the unedited model's", f1),
    ("F2", "ROME, MEMIT and PMET destroy specificity",
     "on every task, each one's specificity EM is at most half the unedited model's", f2),
    ("F3", "every editor but GRACE loses much more effectiveness from CSNE to CNLE (Table V)",
     f"each Table IV editor's decrease (CSNE - CNLE) / CSNE x 100 of effectiveness EM is at least {MUCH:g} "
     "points above GRACE's", f3),
    ("F4", "A-GRACE raises generalization by an order of magnitude over GRACE, at a specificity cost",
     f"over the tasks, A-GRACE's mean generalization EM is at least {FACTOR:g}x GRACE's and {GAIN:g} points "
     "above it, and its mean specificity EM is lower", f4),
    ("F5", "MALMEN is the fastest per edit (Fig. 3), and the memory per edit differs little between editors (Fig. 4)",
     "on every task, MALMEN has the lowest mean seconds of one edit (its training not counted) among the Table IV "
     f"editors, and their mean resident peaks are within {MEMORY_RATIO:g}x of each other", f5),
    ("F6", "ours: SCOPE beats A-GRACE and GRACE on all three checks at once",
     "on every task, SCOPE's weakest of effectiveness, generalization and specificity EM is above GRACE's "
     "and A-GRACE's", f6),
]  # fmt: skip


def verdict(check: Check, grid: Grid) -> str:
    """The plain verdict of a check on our grid (see the module docstring)."""
    if check.ok is None:
        return NOT_RUN
    few = {(t, e): grid[(t, e)]["n"] for t, e in check.used if grid[(t, e)].get("n", MIN_CASES) < MIN_CASES}
    if few:
        sizes = sorted(set(few.values()))
        each = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        where = (", ".join(f"{_name(grid, e)} on {t.upper()} ({n})" for (t, e), n in sorted(few.items())) if len(few) <= 3
                 else f"{len(few)} of the {len(set(check.used))} runs it reads ({each} each)")  # fmt: skip
        lean = "they lean to 'holds'" if check.ok else "they lean to 'does not hold'"
        return f"{FEW} (fewer than {MIN_CASES} cases in {where}; {lean})"
    return HOLDS if check.ok else FAILS


def findings(summaries: list[dict[str, Any]], data: dict[str, Any] | None = None) -> list[Finding]:
    """F1-F6 on our summaries, each with the same rule applied to every published model beside it."""
    ours, theirs = grid_of(summaries), pub.grids(data)
    labels = {e: v["label"] for (_, e), v in ours.items()}
    theirs = {m: {k: {**v, "label": labels.get(k[1])} for k, v in g.items()} for m, g in theirs.items()}
    out = []
    for key, claim, rule, fn in RULES:
        check = fn(ours)
        beside = []
        for model, grid in theirs.items():
            c = fn(grid)
            state = "no rows to check" if c.ok is None else (HOLDS if c.ok else FAILS)
            beside.append(f"{pub.model_label(model)}: {state} — " + "; ".join(c.evidence))
        if key == "F5":  # the paper prints no numbers for Fig. 3/4, only what they show
            beside = [f"published (text of the paper): {line}" for line in pub.efficiency_text(data)]
        if key == "F6":
            beside = [line.replace("no rows to check", "no SCOPE row (SCOPE is ours)") for line in beside]
        out.append(Finding(key, claim, rule, verdict(check, ours), check.evidence, beside))
    return out


LEGEND = (f"Each finding of the study (F1-F5) and ours (F6) checked on this run by the rule shown; the same rule "
          f"on each of the study's models beside it; a rule 'on every task' reads the tasks where the editors it "
          f"compares ran. '{FEW}': a run it reads scored fewer than {MIN_CASES} cases. "
          f"'{NOT_RUN}': an editor it needs did not run. EM x100.")  # fmt: skip


def markdown(found: list[Finding], model: str) -> str:
    """The findings as a Markdown section."""
    out = [f"## Findings, checked on {escape.markdown(model)}", "", LEGEND, ""]
    for f in found:
        out += [f"### {f.key}: {f.claim} — **{f.verdict}**", "", f"Rule: {f.rule}.", ""]
        out += [f"- ours: {line}" for line in f.evidence] + [f"- {line}" for line in f.published] + [""]
    out.append(f"Published numbers: {pub.source()}")
    return "\n".join(out)


def latex(found: list[Finding], model: str) -> str:
    """The findings as a LaTeX subsection with one item per finding."""
    from clmedit.report.tables import _tex

    out = [rf"\subsection*{{Findings, checked on {_tex(model)}}}", _tex(LEGEND), r"\begin{itemize}"]
    for f in found:
        out.append(
            rf"\item \textbf{{{f.key}}} {_tex(f.claim)}: \textbf{{{_tex(f.verdict)}}}. Rule: {_tex(f.rule)}."
        )
        out += [r"\begin{itemize}"] + [rf"\item ours: {_tex(x)}" for x in f.evidence]
        out += [rf"\item {_tex(x)}" for x in f.published] + [r"\end{itemize}"]
    out += [r"\end{itemize}", rf"Published numbers: {_tex(pub.source())}"]
    return "\n".join(out)
