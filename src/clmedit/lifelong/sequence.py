"""Lifelong (sequential) editing: N edits applied one after another, never restored in between.

    for each batch of `batch_size` cases of the sequence, in order:
        seed -> result = editor.apply(model, tok, batch) -> session.absorb(result)
             -> one line in edits.jsonl: wall seconds, own peak, resident memory (RSS) after it
        at a checkpoint (after 1, 10, 100, 1,000 ... edits, and after the last): score every case
             applied so far, or a fixed random sample of K of them (--score-sample; lifelong.checkpoint):
             retention, generalization, specificity, fluency
    finally: session.restore() -> the model is bitwise the unedited one (checked; an error if not)

The sequence is the first N cases of the data (after --limit) that fit the model's context window;
with --folds 2 (trainable editors: MALMEN, A-GRACE, SCOPE) it is the first N cases of fold 0, and
the editor is fitted on the other fold first (or loads `<out>/fold0`, e.g. from `clmedit train
--fold 0`), as the 2-fold protocol does for that fold. `batch_size` edits go into one apply call;
checkpoints count edits, so with batches a checkpoint falls at the first call reaching it.

Memory: the session (editors.base.EditSession) keeps one copy of each tensor an editor touched, the
one from before its first edit, however many applies touch it again.

Failures: an apply that raises is undone by `Editor.apply` (the contract), recorded with its error,
and its cases are not in the model (checkpoints skip them); the run goes on. With
`verify_restore` the weights are checksummed around every apply and a failed apply that left
the model changed stops the run.

Resuming: every apply call is one durable line of edits.jsonl and every scored case one line of
its checkpoint file, so an interrupted run loses at most the call or case in progress, and
completed checkpoints are never lost. The edit itself is saved every `snapshot_every` edits and at
every checkpoint (`checkpoints/snapshot/`, lifelong.snapshot): a rerun of the same configuration
loads that snapshot and re-applies only the recorded calls after it (untimed; a call that failed
stays out); with no usable snapshot it re-applies them all. At every checkpoint it passes it checks
that the model is the one scored there before (`checkpoints/*.state`): a replay that diverges
(other threads, device or dtype) is an error, never a silent mix of two runs. It scores what a checkpoint still lacks (an interrupted one
resumes case by case, a newly requested one is scored on the way) and applies the calls not yet
recorded. A larger N or other checkpoints continue the same sequence (neither is part of the
folder's identity; recorded calls that do not fit the new plan are dropped); another editor,
hparams, data, seed or batch size is refused (`rundir`), and a finished run is not replayed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from clmedit.data.schema import EditCase
from clmedit.editors.session import EditSession
from clmedit.errors import InputError, IntegrityError, NotSavableError
from clmedit.files import atomic_write_text
from clmedit.fixes.artifact import BaseModelRecord
from clmedit.lifelong import checkpoint as ckpt
from clmedit.lifelong import snapshot
from clmedit.lifelong.summary import plan_calls, write_sequential_summary
from clmedit.models.cost import resident_bytes
from clmedit.models.fingerprint import fingerprint, fingerprint_diff
from clmedit.models.text import model_name as name_of
from clmedit.results import EDITS_FILE, read_edits
from clmedit.run import records, rundir
from clmedit.run.folds import fit_fold, split_folds, training_half, unprobed_for
from clmedit.run.settings import RunConfig, parse_checkpoints
from clmedit.run.setup import claim_run, load_model_for, ready, setup_run, usable_cases

log = logging.getLogger(__name__)


def sequence_pool(config: RunConfig, cases: list[EditCase]) -> tuple[list[EditCase], list[EditCase]]:
    """(the cases the sequence is taken from, the cases a trainable editor is fitted on: the other
    folds, probe-disjoint from the first unless `config.folds_overlap`; see run/folds.py)."""
    if config.folds < 2:
        return cases, []
    folds = split_folds(cases, config.folds, config.seed)
    return folds[0], training_half(folds, 0, config.folds_overlap)[0]


@dataclass
class _Sequence:
    """One sequential run over a loaded model: the plan, the session, and what is done."""

    config: RunConfig
    out: Path
    editor: Any
    model: Any
    tok: Any
    batches: list[list[EditCase]]
    states: dict[int, list[int]]  # checkpoint states -> requested counts (lifelong.checkpoint)
    model_name: str
    base: BaseModelRecord | None = None  # the unedited model, as snapshots record it (None: no snapshots)
    session: EditSession = field(default_factory=EditSession)
    applied: list[tuple[int, EditCase]] = field(default_factory=list)  # (edit number, case) in the model
    snapshot_calls: int = 0  # calls held by the latest snapshot

    def edits_after(self, j: int) -> int:
        return sum(len(b) for b in self.batches[:j])

    def complete(self, j: int, recorded: list[dict[str, Any]]) -> bool:
        """Whether checkpoint state j is scored for every case its recorded calls applied."""
        if j > len(recorded):
            return False
        expected = ckpt.score_sample(self.applied_ids(recorded, j), self.config.score_sample, self.config.seed)
        return expected <= ckpt.read_scored(ckpt.checkpoint_path(self.out, self.edits_after(j))).keys()

    def replay(self, j: int, rec: dict[str, Any]) -> None:
        """Re-apply recorded call j as it went the first time (a failed one stays out), untimed."""
        if rec.get("error"):
            return
        set_seed(self.config.seed)
        try:
            self.session.absorb(self.editor.apply(self.model, self.tok, self.batches[j]))
        except Exception as err:
            raise IntegrityError(
                f"re-applying recorded edit call {j} ({self.batches[j][0].case_id}) failed ({type(err).__name__}: "
                f"{err}) although it succeeded the first time; rerun with the first run's settings, or --overwrite"
            ) from err
        self.note_applied(j)

    def note_applied(self, j: int) -> None:
        first = self.edits_after(j)
        self.applied += [(first + i + 1, c) for i, c in enumerate(self.batches[j])]

    def check_state(self, j: int) -> None:
        path = ckpt.checkpoint_path(self.out, self.edits_after(j))
        if not ckpt.check_state(path, ckpt.state_digest(self.model)):
            raise IntegrityError(
                f"re-applying the first {self.edits_after(j)} edits did not give the model that was scored "
                f"at that checkpoint ({path.name}): the edits are not reproducible here (another --threads, "
                "--device or --dtype than the first run?); rerun with those settings, or --overwrite to start afresh"
            )

    def apply(self, j: int) -> dict[str, Any]:
        """Apply call j (absorbed into the session); its record for edits.jsonl."""
        batch = self.batches[j]
        rec: dict[str, Any] = {
            "apply": j,
            "case_ids": [c.case_id for c in batch],
            "edits": self.edits_after(j + 1),
        }
        before = fingerprint(self.model) if self.config.verify_restore else None
        rec["rss_before_bytes"] = resident_bytes()
        set_seed(self.config.seed)
        try:
            result = self.editor.apply(self.model, self.tok, batch)
        except Exception as err:  # one bad edit must not end a 1,000-edit run
            rec["error"] = records.error_record(err)
            log.warning(
                "edit of %s failed: %s: %s", batch[0].case_id, rec["error"]["type"], rec["error"]["message"]
            )
            if before is not None and fingerprint_diff(before, fingerprint(self.model)):
                raise RuntimeError(
                    f"editor {self.editor.name!r} failed on {batch[0].case_id} and left the model changed; "
                    "stopping so the sequence holds only the edits it records"
                ) from err
        else:
            self.session.absorb(result)
            self.note_applied(j)
            rec.update(error=None, seconds=result.seconds, peak_bytes=result.peak_bytes,
                       resident_peak_bytes=result.resident_peak_bytes, info=records.jsonable(result.info))  # fmt: skip
        rec["rss_bytes"] = resident_bytes()
        device = next(self.model.parameters()).device
        if device.type == "cuda":
            rec["device_bytes"] = int(torch.cuda.memory_allocated(device))
        return rec

    def checkpoint(self, j: int) -> None:
        """Score every case applied so far at state j (a checkpoint), logging one line."""
        self.check_state(j)
        edits = self.edits_after(j)
        path = ckpt.checkpoint_path(self.out, edits)
        if not ckpt.score_checkpoint(self.model, self.tok, self.applied, path, self.config, self.model_name):
            return  # scored by an earlier run (the model was checked to be the same)
        summary = ckpt.summarise_checkpoint(list(ckpt.read_scored(path).values()))
        m = summary["metrics"] or {}

        def em(group: str) -> str:
            value = (m.get(group) or {}).get("em")
            return "-" if value is None else f"{value:.1f}"

        log.info(
            "checkpoint %d edits (%d in the model): retention EM %s, generalization EM %s, specificity EM %s "
            "(%d neighbours excluded), RSS %.0f MiB", edits, len(self.applied), em("effectiveness"),
            em("generalization"), em("specificity"), summary["neighbours_excluded"], resident_bytes() / 2**20,
        )  # fmt: skip

    def applied_ids(self, recorded: list[dict[str, Any]], j: int) -> list[str]:
        """The ids of the cases in the model after the first j recorded calls."""
        return [c.case_id for rec, batch in zip(recorded[:j], self.batches) if not rec.get("error") for c in batch]

    def resume(self, recorded: list[dict[str, Any]]) -> int:
        """Load the run's snapshot if it is usable: the number of recorded calls now in the model (0: none).

        It may hold no call past the first checkpoint still to score (that checkpoint must be reached
        by re-applying), nor past the recorded calls."""
        todo = [j for j in self.states if j <= len(recorded) and not self.complete(j, recorded)]
        loaded = snapshot.load_snapshot(self.out, self.model, self.tok, self.editor,
                                        lambda j: self.applied_ids(recorded, j), min(todo, default=len(recorded)))  # fmt: skip
        if loaded is None:
            return 0
        result, calls = loaded
        self.session.absorb(result)
        for j in range(calls):
            if not recorded[j].get("error"):
                self.note_applied(j)
        self.snapshot_calls = calls
        log.info("resuming from the snapshot after %d edits", self.edits_after(calls))
        return calls

    def maybe_snapshot(self, j: int) -> None:
        """After call j: save the edit at a checkpoint, or once `snapshot_every` edits passed since the last."""
        every = self.config.snapshot_every
        due = j + 1 in self.states or (every and self.edits_after(j + 1) - self.edits_after(self.snapshot_calls) >= every)
        if self.base is None or not due or j + 1 <= self.snapshot_calls:
            return
        try:
            snapshot.save_snapshot(self.out, self.model, self.editor, [c for _, c in self.applied], self.base,
                                   j + 1, self.edits_after(j + 1))  # fmt: skip
        except NotSavableError as err:  # an editor that cannot save its edit: resuming re-applies
            log.warning("no snapshots for %s (%s); a rerun re-applies every recorded edit", self.editor.name, err)
            self.base = None
            return
        self.snapshot_calls = j + 1

    def go(self, recorded: list[dict[str, Any]]) -> None:
        """Run the plan from the start: recorded calls are replayed, the others applied and recorded;
        every checkpoint state is checked against the one scored before and its missing cases scored."""
        path = self.out / EDITS_FILE
        calls = plan_calls(recorded, self.batches)
        if len(recorded) > len(calls):  # calls of another plan (a shorter N or other batches cut the tail)
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in calls))
        recorded, m = calls, len(calls)
        if m == len(self.batches) and all(self.complete(j, recorded) for j in self.states):
            log.info("every edit and checkpoint of this sequence is done already")
            return
        start = self.resume(recorded) if m and self.base is not None else 0
        if m > start:
            log.info("resuming: re-applying %d recorded edits before going on", self.edits_after(m) - self.edits_after(start))
        bar = tqdm(total=self.edits_after(len(self.batches)), desc=f"{self.editor.name} sequential",
                   unit="edit", dynamic_ncols=True, initial=self.edits_after(start))  # fmt: skip
        try:
            if start in self.states:  # the snapshot is at a checkpoint still to score
                self.checkpoint(start)
            for j in range(start, len(self.batches)):
                if j < m:
                    self.replay(j, recorded[j])
                else:
                    records.append_record(path, self.apply(j))
                bar.update(len(self.batches[j]))
                if j + 1 in self.states:
                    self.checkpoint(j + 1)
                self.maybe_snapshot(j)
        finally:
            bar.close()


def run_sequential(config: RunConfig, model=None, tok=None, editor=None, overwrite: bool = False) -> Path:
    """The lifelong run `config` (config.sequential = N edits); returns the run folder.

    Writes `edits.jsonl`, `checkpoints/`, `summary.json` and `table.md` (see the module doc for
    resuming). `model`/`tok` may be passed (the unedited model; it is restored when this returns
    or raises). Everything a user can get wrong is checked before the model loads.
    """
    if config.sequential is None:
        raise InputError("run_sequential needs config.sequential (the number of edits)")
    if config.shard != "0/1":
        raise InputError("--sequential is one sequence of edits: it cannot be sharded (leave out --shard)")
    setup = setup_run(config, editor)
    pool, train = sequence_pool(config, setup.cases)
    where = "in fold 0 of --folds 2" if config.folds > 1 else "selected (after --limit)"
    if config.sequential > len(pool):
        raise InputError(
            f"--sequential {config.sequential}: only {len(pool)} cases are {where}; lower N or give more cases"
        )
    out, editor = setup.out, setup.editor
    with rundir.writing(out / EDITS_FILE, config.shard):
        claim_run(config, setup, overwrite, writes="cases.jsonl")
        if model is None:
            model, tok = load_model_for(config.model, config.device, config.dtype)
        sequence, unusable = usable_cases(pool, model, tok, config.fluency, config.sequential)
        if len(sequence) < config.sequential:
            log.warning("only %d usable cases for --sequential %d", len(sequence), config.sequential)
        batches = [sequence[i : i + config.batch_size] for i in range(0, len(sequence), config.batch_size)]
        counts = [sum(len(b) for b in batches[: j + 1]) for j in range(len(batches))]
        states = ckpt.checkpoint_states(counts, parse_checkpoints(config.checkpoints))
        # neighbour answers (generated by the unedited model) only for the cases a checkpoint may score
        scored = ckpt.may_score(sequence, [counts[j - 1] for j in states], config.score_sample, config.seed)
        clean = ready(config, editor, model, tok, scored)
        if editor.trainable:
            fit_fold(editor, model, tok, train, out / "fold0", unprobed_for(setup.data, pool))
        # the unedited model, as snapshots record it (an editor with state outside its edit is re-applied)
        base = BaseModelRecord.of(model, tok, config.model) if editor.SNAPSHOT_RESUME else None
        run = _Sequence(config, out, editor, model, tok, batches, states, name_of(model), base)
        try:
            if batches:
                run.go(read_edits(out))
        finally:
            run.session.restore()
            changed = fingerprint_diff(clean, fingerprint(model))
            write_sequential_summary(out, config, setup, batches, states, unusable, run.model_name)
            if changed:
                raise RuntimeError(
                    f"editor {editor.name!r}: restoring the session left the model changed ({', '.join(changed[:5])})"
                )
    return out
