"""Generation for the server: one worker thread batches the waiting requests into one `generate`.

Requests (`Job`s) queue up while a batch runs; the worker then takes every waiting job with the
same sampling settings (up to `max_batch`) and decodes them together, left-padded as
`eval.generate` does, so a greedy answer is the one the prompt gets alone. A batch holds the
fix store's lock for reading: fixes change between batches, never during one. Each row stops on
its own (eos, a stop string, its own `max_tokens`, or its client gone) and streams its text as it
grows; a stop string is never sent, not even in part (the last characters that could begin one
are held back until they cannot).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from clmedit.eval.generate import _eos_ids, _generation_config, _left_padding
from clmedit.models.text import model_inputs
from clmedit.serve.store import FixStore

log = logging.getLogger(__name__)
Event = dict[
    str, Any
]  # {"delta": text} ... then {"done": finish_reason, "usage": ...} or {"error", "status"}


@dataclass(frozen=True)
class Sampling:
    """Greedy when `temperature` is 0; otherwise nucleus sampling at `temperature`."""

    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Job:
    """One prompt to answer; `emit` receives its events, in the worker's thread."""

    prompt: str
    max_tokens: int
    emit: Callable[[Event], None]
    sampling: Sampling = Sampling()
    stop: list[str] = field(default_factory=list)
    cancelled: bool = False  # set when the client has gone: the row stops at its next token


class _Rows(StoppingCriteria):
    """Follows every row of a batch at each decoding step: streams its new text, says when it is done."""

    def __init__(self, jobs: list[Job], start: int, eos: set[int], tok, prompt_tokens: list[int]):
        self.jobs, self.start, self.eos, self.tok = jobs, start, eos, tok
        self.prompt_tokens = prompt_tokens
        self.sent = [0] * len(jobs)  # characters of each row's text already emitted
        self.done = [False] * len(jobs)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.start :].tolist()
        for i, ids in enumerate(new):
            if not self.done[i]:
                self._step(i, ids)
        return torch.tensor(self.done, device=input_ids.device)

    def _step(self, i: int, ids: list[int]) -> None:
        job = self.jobs[i]
        if ids[-1] in self.eos:
            return self.finish(i, ids[:-1], "stop")
        text = self.tok.decode(ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in job.stop if s in text]
        if cuts:
            return self.finish(i, ids, "stop", text[: min(cuts)])
        if len(ids) >= job.max_tokens or job.cancelled:
            return self.finish(i, ids, "length", text)
        hold = max((len(s) - 1 for s in job.stop), default=0)
        end = len(text) - hold
        while end > self.sent[i] and text[end - 1] == "\ufffd":  # a character still being decoded
            end -= 1
        if end > self.sent[i]:
            job.emit({"delta": text[self.sent[i] : end]})
            self.sent[i] = end

    def finish(self, i: int, ids: list[int], reason: str, text: str | None = None) -> None:
        """Emit what is left of row `i`'s text and its end."""
        if text is None:
            text = self.tok.decode(ids, skip_special_tokens=True)
        if len(text) > self.sent[i]:
            self.jobs[i].emit({"delta": text[self.sent[i] :]})
        self.done[i] = True
        use = {"prompt_tokens": self.prompt_tokens[i], "completion_tokens": len(ids)}
        self.jobs[i].emit({"done": reason, "usage": use})


class Generator:
    """The worker thread that answers `Job`s in batches, between fix changes."""

    def __init__(self, store: FixStore, max_batch: int = 8):
        self.store, self.max_batch = store, max_batch
        self.context = getattr(store.model.config, "max_position_embeddings", None) or 1 << 30
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []  # taken from the queue but not yet batched (other sampling)
        self._thread = threading.Thread(target=self._loop, name="clmedit-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _next_batch(self) -> list[Job] | None:
        first = self._waiting.pop(0) if self._waiting else self._queue.get()
        if first is None:
            return None
        batch = [first]
        for job in list(self._waiting):
            if len(batch) < self.max_batch and job.sampling == first.sampling:
                self._waiting.remove(job)
                batch.append(job)
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # close after this batch
                break
            (batch if job.sampling == first.sampling else self._waiting).append(job)
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                with self.store.lock.read():
                    self._run(batch)
            except Exception:  # a bug: every waiting client gets a 500, the worker goes on
                log.exception("generation failed")
                for job in batch:
                    job.emit({"error": "generation failed (see the server log)", "status": 500})

    @torch.no_grad()
    def _run(self, batch: list[Job]) -> None:
        model, tok = self.store.model, self.store.tok
        batch = [j for j in batch if not j.cancelled]  # their clients left while they waited
        if not batch:
            return
        lengths = [len(ids) for ids in tok([j.prompt for j in batch], add_special_tokens=False)["input_ids"]]
        fits = [n + j.max_tokens <= self.context for n, j in zip(lengths, batch)]
        for job, n, ok in zip(batch, lengths, fits):
            if not ok:
                job.emit({"error": f"the prompt ({n} tokens) and max_tokens ({job.max_tokens}) exceed the "
                                   f"model's context of {self.context} tokens", "status": 400})  # fmt: skip
        batch, lengths = [j for j, ok in zip(batch, fits) if ok], [n for n, ok in zip(lengths, fits) if ok]
        if not batch:
            return
        device = next(model.parameters()).device
        s = batch[0].sampling
        config = _generation_config(model, tok, max(j.max_tokens for j in batch), s.temperature > 0, None)
        if s.temperature > 0:
            config.temperature, config.top_p = s.temperature, s.top_p
        with _left_padding(tok):
            enc = tok([j.prompt for j in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in model_inputs(enc).items()}
        rows = _Rows(batch, enc["input_ids"].shape[1], _eos_ids(model, tok), tok, lengths)
        seqs = model.generate(**enc, generation_config=config, stopping_criteria=StoppingCriteriaList([rows]))
        new = seqs[:, rows.start :].tolist()
        for i, done in enumerate(rows.done):  # rows the step budget ended before their own end
            if not done:
                rows.finish(i, new[i][: batch[i].max_tokens], "length")
