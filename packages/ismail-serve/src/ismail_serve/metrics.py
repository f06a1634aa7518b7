"""Prometheus metrics of the service, served at GET /metrics in the text exposition format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets (seconds) wide enough for a tiny model on CPU and a big one on a GPU.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServeMetrics:
    """All metrics in one registry of their own (several servers may share a test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._add_gauges()
        self._add_counters()
        self._add_histograms()

    def _add_gauges(self) -> None:
        """What runs and waits now, and the KV cache's size and use."""
        r = self.registry
        self.running = Gauge(
            "ismail_requests_running", "Sequences running (a classifier: texts)", registry=r
        )
        self.waiting = Gauge(
            "ismail_requests_waiting", "Sequences waiting (a classifier: texts)", registry=r
        )
        # the KV cache, with vLLM's metric names after the prefix
        self.kv_cache_usage = Gauge(
            "ismail_kv_cache_usage_perc",
            "Fraction of KV-cache blocks held by sequences (1 = full)",
            registry=r,
        )
        self.kv_cache_blocks = Gauge("ismail_kv_cache_blocks", "KV-cache blocks", registry=r)
        self.kv_cache_bytes = Gauge("ismail_kv_cache_bytes", "Bytes of the KV cache", registry=r)

    def _add_counters(self) -> None:
        """Totals since start: prefix-cache lookups, preemptions, tokens, texts, outcomes."""
        r = self.registry
        self.prefix_cache_queries = Counter(
            "ismail_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (recomputed ones included)",
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "ismail_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not prefilled again)",
            registry=r,
        )
        self.preemptions = Counter(
            "ismail_num_preemptions",
            "Sequences preempted (cache blocks given away, recomputed later)",
            registry=r,
        )
        self.prompt_tokens = Counter("ismail_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("ismail_generation_tokens", "Tokens generated", registry=r)
        self.classified_texts = Counter(
            "ismail_classify_texts", "Texts classified (POST /v1/classify)", registry=r
        )
        self.finished = Counter(
            "ismail_sequences_finished",
            "Sequences finished, by reason (stop, length, abort, timeout, error)",
            ["finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "ismail_requests_rejected",
            "Requests refused before running (queue_full, draining, loading)",
            ["reason"],
            registry=r,
        )

    def _add_histograms(self) -> None:
        """Latencies: time to first token, between tokens, of a classify request, end to end."""
        r = self.registry
        self.ttft = Histogram(
            "ismail_time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "ismail_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.classify_latency = Histogram(
            "ismail_classify_request_latency_seconds",
            "Time a /v1/classify request's texts took to classify (tokenizing included)",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "ismail_e2e_request_latency_seconds",
            "Time from arrival to the end of a sequence",
            buckets=_E2E_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
