"""Serving a text classifier (`ismail finetune --task classify`): the worker behind
POST /v1/classify.

The texts of one request are classified by one `TextClassifier.predict` call (batched by
length, `batch_size` texts per forward pass) on a single worker thread that owns the model:
requests run one after another, off the event loop, so /health and /metrics keep answering.
At most `max_waiting` texts may be accepted and not yet answered; beyond that a request is
refused (429) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ismail_core.classify.data import encode_texts
from ismail_core.classify.predict import Prediction, TextClassifier

from ismail_serve.config import ServeConfig
from ismail_serve.errors import ServeConfigError, ServeError
from ismail_serve.metrics import ServeMetrics


class ClassifierBusyError(ServeError, RuntimeError):
    """More texts are waiting than the server accepts; the client should retry later."""


class ClassifierStoppedError(ServeError, RuntimeError):
    """The server is draining or stopped and takes no new texts."""


@dataclass
class Classified:
    """The answer for one request: a prediction per text and the tokens the model read."""

    predictions: list[Prediction]
    prompt_tokens: int


class ClassifierRunner:
    """A loaded TextClassifier behind one worker thread (see the module docstring)."""

    def __init__(
        self,
        classifier: TextClassifier,
        batch_size: int = ServeConfig.max_batch,
        max_waiting: int = ServeConfig.max_waiting,
        metrics: ServeMetrics | None = None,
    ) -> None:
        if batch_size < 1:
            raise ServeConfigError(f"--max-batch must be at least 1, got {batch_size}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.max_waiting = max_waiting
        self.metrics = metrics or ServeMetrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ismail-classify")
        self._pending = 0  # texts accepted and not yet answered (changed on the event loop)
        self._accepting = True

    @property
    def labels(self) -> list[str]:
        """The classifier's labels, in class id order."""
        return self.classifier.labels

    @property
    def max_len(self) -> int:
        """Tokens of a text the model reads (the start of a longer text is kept)."""
        return self.classifier.max_len

    @property
    def pending(self) -> int:
        """Texts accepted and not yet answered."""
        return self._pending

    async def classify(self, texts: Sequence[str]) -> Classified:
        """Predictions for `texts`, in order, computed on the worker thread. Raises
        ClassifierStoppedError while draining and ClassifierBusyError when more than
        `max_waiting` texts would be waiting."""
        if not self._accepting:
            raise ClassifierStoppedError("the server is shutting down")
        if self._pending and self._pending + len(texts) > self.max_waiting:
            raise ClassifierBusyError(
                f"{self._pending} texts are waiting to be classified and the server takes at "
                f"most {self.max_waiting} (--max-waiting)"
            )
        self._pending += len(texts)
        self.metrics.waiting.inc(len(texts))
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run, list(texts))
        finally:
            self._pending -= len(texts)

    def _run(self, texts: list[str]) -> Classified:
        """One request on the worker thread: the tokens counted, then the predictions."""
        start = time.perf_counter()
        self.metrics.waiting.dec(len(texts))
        self.metrics.running.inc(len(texts))
        try:
            tokens = sum(map(len, encode_texts(self.classifier.tokenizer, texts, self.max_len)))
            predictions = self.classifier.predict(texts, batch_size=self.batch_size)
        finally:
            self.metrics.running.dec(len(texts))
        self.metrics.prompt_tokens.inc(tokens)
        self.metrics.classified_texts.inc(len(texts))
        self.metrics.classify_latency.observe(time.perf_counter() - start)
        return Classified(predictions, tokens)

    def stop_accepting(self) -> None:
        """Refuse new requests from now on (draining)."""
        self._accepting = False

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until every accepted request has been classified; False if `timeout` passed
        first. (The worker runs requests in order, so a no-op queued now ends after them.)"""
        try:
            self._executor.submit(lambda: None).result(timeout)
        except TimeoutError:
            return False
        except RuntimeError:  # shut down already: nothing runs any more
            pass
        return True

    def shutdown(self) -> None:
        """Stop taking requests and let the worker thread end after its current one."""
        self.stop_accepting()
        self._executor.shutdown(wait=False, cancel_futures=True)
