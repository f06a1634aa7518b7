"""What the HTTP handlers share: the engine (or, for a classifier checkpoint, the classifier)
once loaded, the tokenizer, status and settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TypeVar

from ismail_core.classify.predict import not_a_classifier
from ismail_core.tokenizer import TokenizerProtocol

from ismail_serve.classifier import ClassifierRunner
from ismail_serve.engine import LLMEngine
from ismail_serve.errors import APIError, bad_request
from ismail_serve.limits import DEFAULT_MAX_REQUEST_BYTES
from ismail_serve.metrics import ServeMetrics
from ismail_serve.prompts import longest_token_chars

STATUS_LOADING = "loading"
STATUS_OK = "ok"
STATUS_DRAINING = "draining"
STATUS_FAILED = "failed"

_Model = TypeVar("_Model", LLMEngine, ClassifierRunner)


@dataclass
class ServerState:
    """Mutable server state; `status` moves loading -> ok -> draining (or loading -> failed)."""

    model_name: str
    api_key: str | None = None
    protect_metrics: bool = False  # the API key also covers /metrics and the API schema
    max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES  # larger bodies get 413
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    status: str = STATUS_LOADING
    engine: LLMEngine | None = None
    tokenizer: TokenizerProtocol | None = None
    max_model_len: int = 0
    compare_tokenizer: TokenizerProtocol | None = (
        None  # shown next to the model's in the tokenizer playground
    )
    compare_name: str = ""
    # Longest prompt text (characters) that can still fit the context; None: no sure bound.
    prompt_char_limit: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    # A text classifier is served by POST /v1/classify alone (known before it loads).
    is_classifier: bool = False
    classifier: ClassifierRunner | None = None
    checkpoint: str = ""  # the path served, for messages

    def attach(self, engine: LLMEngine) -> None:
        """The model is loaded: start serving with this engine."""
        self.engine = engine
        self.metrics = engine.metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.config.max_model_len
        longest = longest_token_chars(engine.tokenizer)
        self.prompt_char_limit = None if longest is None else self.max_model_len * longest
        self.status = STATUS_OK

    def attach_classifier(self, runner: ClassifierRunner) -> None:
        """The classifier is loaded: start serving POST /v1/classify with it."""
        self.classifier = runner
        self.metrics = runner.metrics
        self.tokenizer = runner.classifier.tokenizer
        self.max_model_len = runner.max_len
        self.status = STATUS_OK

    def ready_engine(self) -> LLMEngine:
        """The engine; a 400 when the server holds a classifier (which only classifies), a
        503 while loading, draining or after a failed load."""
        if self.is_classifier:
            raise bad_request(
                f"'{self.model_name}' is a classifier: use POST /v1/classify (a label and "
                "scores for each input text). Completions, chat and tokenize routes need a "
                "language model.",
                code="model_is_classifier",
            )
        return self._loaded(self.engine)

    def ready_classifier(self) -> ClassifierRunner:
        """The classifier; a 400 when the server holds a language model, a 503 while
        loading, draining or after a failed load."""
        if not self.is_classifier:
            raise bad_request(
                f"{not_a_classifier(self.checkpoint or self.model_name)}. POST /v1/classify "
                "needs a classifier checkpoint; this server answers /v1/completions and "
                "/v1/chat/completions.",
                code="model_not_classifier",
            )
        return self._loaded(self.classifier)

    def _loaded(self, model: _Model | None) -> _Model:
        """`model` (the engine or the classifier) once the server is ready to run it, else
        the 503 that says why not."""
        if self.status == STATUS_OK and model is not None:
            return model
        raise self._unavailable()

    def _unavailable(self) -> APIError:
        """The 503 for a model that is not ready, counted as a rejection."""
        reason = {
            STATUS_LOADING: "The model is still loading; retry in a few seconds.",
            STATUS_DRAINING: "The server is shutting down and accepts no new requests.",
            STATUS_FAILED: "The model failed to load; see the server log.",
        }[self.status]
        self.metrics.rejected.labels(reason=self.status).inc()
        return APIError(
            503,
            reason,
            type="service_unavailable",
            code=self.status,
            headers={"Retry-After": "5"} if self.status == STATUS_LOADING else None,
        )
