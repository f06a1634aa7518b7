"""The engine loop: continuous batching over a paged KV cache with automatic prefix caching.

One thread owns the model. Each step it (1) takes newly submitted sequences and abort requests,
(2) drops aborted and timed-out sequences, freeing their blocks, (3) asks the scheduler for the
step's prefill chunks and decode batch (admitting and preempting by free blocks), (4) runs
them, (5) samples one token per finished prompt and per decoding sequence, each with its own
generator, and (6) pushes new text to each sequence's sink. The API side talks to it only
through `submit` and `abort`, which are thread-safe and never block on the model, and through
`run_between_steps` for model calls that are not generation (POST /v1/routing): they run on
the engine thread before a step, so they never race the batched forward passes.

A failure is confined to the sequences it concerns: when a batched forward pass or sampling
call raises, the rows are retried one by one and only the rows that fail again are ended with
an error; the loop keeps serving everyone else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ismail_core.generate import ContinuationText
from ismail_core.model.runner import ModelRunner
from ismail_core.tokenizer import TokenizerProtocol

from ismail_serve.config import ServeConfig
from ismail_serve.engine.logprobs import TokenLogprob, alternative_texts, with_prompt_texts
from ismail_serve.engine.runner import StepRunner
from ismail_serve.engine.scheduler import Scheduler
from ismail_serve.engine.sequence import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_TIMEOUT,
    OutputSink,
    SequenceOutput,
    SequenceRequest,
)
from ismail_serve.engine.sequence import (
    Sequence as Seq,
)
from ismail_serve.errors import ServeConfigError, ServeError
from ismail_serve.metrics import ServeMetrics

log = logging.getLogger("ismail_serve")

T = TypeVar("T")


class QueueFullError(ServeError, RuntimeError):
    """The waiting queue cannot take the request now; the client should retry later."""


class EngineStoppedError(ServeError, RuntimeError):
    """The engine is draining or stopped and accepts no new requests."""


@dataclass
class EngineConfig:
    """Engine limits.

    max_batch: sequences that can run at once (as many as the cache blocks hold, up to this).
    max_model_len: prompt + output tokens of one sequence.
    max_waiting: sequences that may wait to run before new requests get 429.
    prefill_chunk: prompt tokens prefilled per step (all prefilling sequences together).
    request_timeout: seconds a sequence may take from arrival to its end (None: no limit).

    The defaults are ismail-serve's (ServeConfig), except max_model_len, which the server
    takes from the model.
    """

    max_batch: int = ServeConfig.max_batch
    max_model_len: int = 2048
    max_waiting: int = ServeConfig.max_waiting
    prefill_chunk: int = ServeConfig.prefill_chunk
    request_timeout: float | None = ServeConfig.request_timeout

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_model_len", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ServeConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ServeConfigError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ServeConfigError(
                f"request_timeout must be > 0 seconds, got {self.request_timeout}"
            )


class LLMEngine:
    """Continuous-batching generation over a `ModelRunner`; run `start()` to serve."""

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: TokenizerProtocol,
        config: EngineConfig,
        metrics: ServeMetrics | None = None,
    ) -> None:
        capacity = runner.num_blocks * runner.block_size
        if capacity < config.max_model_len:
            raise ServeConfigError(
                f"the KV cache holds {capacity} tokens, less than one sequence of max_model_len "
                f"{config.max_model_len}; give it more blocks or lower max_model_len"
            )
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = metrics or ServeMetrics()
        self.scheduler = Scheduler(runner.blocks, config.max_batch, config.prefill_chunk)
        self.vocab_size = tokenizer.vocab_size
        self.steps = StepRunner(
            runner, config.prefill_chunk, config.max_model_len, self.vocab_size, self._guarded
        )
        self._counted = (0, 0, 0)  # prefix queries, hits, preemptions already in the metrics
        self._lock = threading.Lock()
        self._new: list[Seq] = []
        self._aborted: set[str] = set()
        self._jobs: list[tuple[Callable[[], Any], Future]] = []  # run_between_steps
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self.metrics.kv_cache_blocks.set(runner.num_blocks)
        self.metrics.kv_cache_bytes.set(runner.cache_bytes())

    # ---- API side (any thread) ----

    def submit(self, requests: Sequence[SequenceRequest], sink: OutputSink) -> None:
        """Queue sequences (all of one request, or none of them).

        Raises QueueFullError when the waiting queue cannot take them all, EngineStoppedError
        when draining or stopped. Updates arrive through `sink`, called on the engine thread.
        """
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the server is shutting down")
            free = self.config.max_batch - self.scheduler.num_running
            queued = len(self._new) + self.scheduler.num_waiting + len(requests)
            if queued - max(free, 0) > self.config.max_waiting:
                raise QueueFullError(
                    f"the waiting queue is full ({self.config.max_waiting} sequences)"
                )
            now = time.monotonic()
            timeout = self.config.request_timeout
            for req in requests:
                text = ContinuationText(
                    self.tokenizer, req.prompt_ids, req.stop, req.skip_special_tokens
                )
                generator = req.params.make_generator(self.runner.device)
                deadline = now + timeout if timeout is not None else None
                self._new.append(Seq(req, text, sink, generator, deadline))
        self._wakeup.set()

    def abort(self, request_id: str) -> None:
        """End all sequences of a request at the next step (the client went away)."""
        with self._lock:
            self._aborted.add(request_id)
        self._wakeup.set()

    def run_between_steps(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn()` on the engine thread before its next step and return a Future of its
        result (or exception). For model work that is not generation: the engine thread owns
        the model, so such a call never runs beside a batched step, and the running sequences
        wait for it once, as they would for a prompt's prefill. Raises EngineStoppedError when
        draining or stopped."""
        future: Future[T] = Future()
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the server is shutting down")
            self._jobs.append((fn, future))
        self._wakeup.set()
        return future

    def _run_jobs(self) -> bool:
        """Run the calls queued by run_between_steps; returns whether there were any."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for fn, future in jobs:
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up on it
            try:
                future.set_result(fn())
            except Exception as exc:  # the caller gets it; the engine keeps serving
                future.set_exception(exc)
        return bool(jobs)

    @property
    def num_unfinished(self) -> int:
        """Sequences submitted and not yet finished."""
        with self._lock:
            return len(self._new) + self.scheduler.num_waiting + self.scheduler.num_running

    def stop_accepting(self) -> None:
        """Refuse new requests from now on (draining)."""
        with self._lock:
            self._accepting = False

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until every submitted sequence finished; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.num_unfinished:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def abort_all(self) -> None:
        """End every sequence at the next step (end of a drain deadline)."""
        with self._lock:
            self._aborted.update(s.request_id for s in self._new)
            self._aborted.update(s.request_id for s in self.scheduler.waiting)
            self._aborted.update(s.request_id for s in self.scheduler.running)
        self._wakeup.set()

    def start(self) -> None:
        """Run the engine loop in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="ismail-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop; sequences still in flight end with finish reason "abort"."""
        self.stop_accepting()
        self.abort_all()
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for _, future in jobs:  # queued after the last step: never run
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineStoppedError("the server is shutting down"))

    # ---- engine thread ----

    def _loop(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                worked = self.step()
            except Exception:  # a bug in the step itself: end what is in flight, keep serving
                log.exception("engine step failed; ending the sequences in flight")
                self._fail_everything("internal engine error")
                worked = False
            if self._stop.is_set() and not self.scheduler.has_work():
                return
            if not worked:
                # Wake up for new work, or periodically to enforce timeouts of waiting sequences.
                self._wakeup.wait(timeout=0.25)

    def step(self) -> bool:
        """One engine iteration; returns whether any model work was done."""
        jobs = self._run_jobs()
        self._take_new_and_aborted()
        self._expire()
        plan = self.scheduler.schedule()
        out = self.steps.run(plan)
        for seq in out.prefilled:
            if not seq.prompt_counted:  # not again after a preemption
                seq.prompt_counted = True
                self.metrics.prompt_tokens.inc(seq.num_prompt_tokens)
            if seq.request.max_tokens == 0:  # prompt scoring only (echo)
                self._finish(seq, FINISH_LENGTH)
        for seq, token, entry in out.tokens:
            if not seq.is_finished:
                self._append_token(seq, token, entry)
        self._update_gauges()
        return jobs or not plan.is_empty

    def _guarded(self, seqs: list[Seq], fn: Callable[[list[Seq]], T]) -> T | None:
        """Run `fn(seqs)`; on failure end those sequences with an error and return None."""
        try:
            return fn(seqs)
        except Exception as exc:
            log.exception("sequence(s) %s failed", [s.request_id for s in seqs])
            for seq in seqs:
                self._finish_with_error(seq, f"{type(exc).__name__}: {exc}")
            return None

    def _append_token(self, seq: Seq, token: int, entry: TokenLogprob | None = None) -> None:
        now = time.monotonic()
        if seq.last_token_time is None:
            self.metrics.ttft.observe(now - seq.arrival_time)
        else:
            self.metrics.itl.observe(now - seq.last_token_time)
        seq.last_token_time = now
        seq.output_ids.append(token)
        self.metrics.generation_tokens.inc()

        req = seq.request
        if token in req.stop_token_ids:
            self._record_logprob(seq, entry, "")
            text, _ = self._finish_text(seq)
            self._finish(seq, FINISH_STOP, text)
            return
        text, stopped = seq.text.push(token)
        self._record_logprob(seq, entry, seq.text.last_piece)
        if stopped:
            self._finish(seq, FINISH_STOP, text)
        elif len(seq.output_ids) >= req.max_tokens or seq.num_tokens >= self.config.max_model_len:
            rest, stopped = self._finish_text(seq)
            self._finish(seq, FINISH_STOP if stopped else FINISH_LENGTH, text + rest)
        elif text or seq.pending_logprobs:
            self._emit(seq, self._output(seq, text))

    @staticmethod
    def _finish_text(seq: Seq) -> tuple[str, bool]:
        """The text held back until the end; it also ends the last token's text."""
        text, stopped = seq.text.finish()
        if seq.pending_logprobs:  # e.g. the last letter of an alternating root
            seq.pending_logprobs[-1].text += seq.text.last_piece
        return text, stopped

    def _record_logprob(self, seq: Seq, entry: TokenLogprob | None, text: str) -> None:
        """Keep a generated token's log-probability, with its text, for the next update."""
        if entry is not None:
            entry.text = text
            alternative_texts(self.tokenizer, seq.history()[:-1], entry)
            seq.pending_logprobs.append(entry)

    def _output(
        self, seq: Seq, text: str, reason: str | None = None, error: str | None = None
    ) -> SequenceOutput:
        """The next update of `seq`: its text, and the log-probabilities not yet sent."""
        out = SequenceOutput(seq.request.index, text, len(seq.output_ids), reason, error)
        if seq.request.logprobs is not None:
            out.logprobs, seq.pending_logprobs = seq.pending_logprobs, []
        if seq.request.prompt_logprobs is not None and not seq.prompt_sent and seq.prefill_done:
            req = seq.request
            out.prompt_logprobs = with_prompt_texts(
                self.tokenizer, seq.prompt_ids, seq.prompt_scores, req.skip_special_tokens
            )
            seq.prompt_sent = True
        return out

    def _finish(self, seq: Seq, reason: str, text: str = "", error: str | None = None) -> None:
        if seq.is_finished:
            return
        seq.finish_reason = reason
        self.scheduler.remove(seq)
        self.metrics.finished.labels(finish_reason=reason).inc()
        self.metrics.e2e.observe(time.monotonic() - seq.arrival_time)
        self._emit(seq, self._output(seq, text, reason, error))

    def _finish_with_error(self, seq: Seq, message: str) -> None:
        self._finish(seq, FINISH_ERROR, error=message)

    @staticmethod
    def _emit(seq: Seq, out: SequenceOutput) -> None:
        try:
            seq.sink(out)
        except Exception:  # the receiving side is gone; nothing to tell it
            log.debug("dropped an update for request %s", seq.request_id, exc_info=True)

    def _take_new_and_aborted(self) -> None:
        with self._lock:
            new, self._new = self._new, []
            aborted, self._aborted = self._aborted, set()
        for seq in new:
            if seq.request_id in aborted:
                seq.finish_reason = FINISH_ABORT
                self.metrics.finished.labels(finish_reason=FINISH_ABORT).inc()
                self._emit(seq, SequenceOutput(seq.request.index, "", 0, FINISH_ABORT))
            else:
                self.scheduler.add(seq)
        if aborted:
            for seq in [*self.scheduler.waiting, *self.scheduler.running]:
                if seq.request_id in aborted:
                    self._finish(seq, FINISH_ABORT)

    def _expire(self) -> None:
        now = time.monotonic()
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.deadline is not None and now >= seq.deadline:
                self._finish(seq, FINISH_TIMEOUT, error="the request ran past the server timeout")

    def _fail_everything(self, message: str) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            try:
                self._finish_with_error(seq, message)
            except Exception:
                log.exception("could not end sequence %s cleanly", seq.request_id)

    def _update_gauges(self) -> None:
        m, blocks = self.metrics, self.runner.blocks
        m.running.set(self.scheduler.num_running)
        m.waiting.set(self.scheduler.num_waiting + len(self._new))
        m.kv_cache_usage.set(blocks.usage)
        now = (blocks.prefix_queries, blocks.prefix_hits, self.scheduler.num_preemptions)
        for counter, new, old in zip(
            (m.prefix_cache_queries, m.prefix_cache_hits, m.preemptions), now, self._counted
        ):
            counter.inc(new - old)
        self._counted = now
