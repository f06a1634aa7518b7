"""Start-up, model loading and graceful shutdown around uvicorn.

The HTTP server starts first and loads the model in a background thread, so /health can say
"loading" (503) meanwhile. SIGTERM or SIGINT starts a drain: new requests get 503, /health
turns 503, running and queued requests finish (up to `drain_timeout`, after which they are
aborted), then the server exits with status 0.

Later signals do not cut the drain short, with one exception: a SIGINT more than
`REPEAT_WINDOW_S` after the first signal (a second Ctrl-C, given on purpose) stops at once.
systemd and container runtimes signal the whole process group, so under `uv run ismail-serve`
each signal arrives twice (uv forwards a copy). A repeated SIGTERM is therefore always ignored
(those supervisors escalate to SIGKILL themselves when their stop timeout passes), and so is a
SIGINT inside the window.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import torch
import uvicorn
from ismail_core.model.cache import blocks_for
from ismail_core.model.runner import ModelRunner
from ismail_core.runtime import resolve_device, resolve_precision
from ismail_core.tokenizer import load_tokenizer

from ismail_serve.app import create_app
from ismail_serve.classifier import ClassifierRunner
from ismail_serve.config import ServeConfig
from ismail_serve.engine import EngineConfig, LLMEngine
from ismail_serve.errors import ServeConfigError
from ismail_serve.metrics import ServeMetrics
from ismail_serve.state import STATUS_DRAINING, STATUS_FAILED, ServerState
from ismail_serve.web import page_urls

log = logging.getLogger("ismail_serve")

# Seconds after the first signal in which a SIGINT is taken as a forwarded copy, not a Ctrl-C.
REPEAT_WINDOW_S = 2.0

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The precision of ismail_core's device policy (resolve_precision) each --dtype stands for
DTYPE_PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_DTYPE_NAMES = {precision: name for name, precision in DTYPE_PRECISIONS.items()}


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The weights' and KV cache's dtype for --dtype `name` on `device`, by the precision policy
    training uses: "auto" (or None) is bfloat16 where the device runs it natively, else float16
    on a GPU, else float32. A dtype the device cannot run (bfloat16 on a GPU without it) is a
    PrecisionError naming the fix."""
    if name is None or name == "auto":
        precision = "auto"
    elif name in DTYPE_PRECISIONS:
        precision = DTYPE_PRECISIONS[name]
    else:
        raise ServeConfigError(f"--dtype must be one of {', '.join(DTYPES)} or auto, got {name!r}")
    precision = resolve_precision(precision, device, flag="--dtype", names=_DTYPE_NAMES)
    return DTYPES[_DTYPE_NAMES[precision]]


def resolve_placement(config: ServeConfig) -> tuple[torch.device, torch.dtype]:
    """The device and dtype `config` asks for, checked before a model is loaded: an unknown or
    missing device, a dtype it cannot run, FP8 quantization on a device without float8."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.quantize == "fp8":
        resolve_precision("fp8", device, flag="--quantize")
    return device, dtype


def cache_blocks(config: ServeConfig, per_token: int, max_len: int) -> int:
    """KV-cache blocks for `config`: what --kv-cache-memory holds, else room for --max-batch
    sequences of max_len tokens. Either must hold at least one sequence of max_len tokens."""
    size = config.block_size
    if size < 1:
        raise ServeConfigError(f"--block-size must be >= 1, got {size}")
    if config.kv_cache_memory_mib is None:
        return config.max_batch * blocks_for(max_len, size)
    budget = config.kv_cache_memory_mib
    num_blocks = int(budget * 2**20 // (per_token * size))
    if num_blocks < blocks_for(max_len, size):
        need = per_token * max_len / 2**20
        raise ServeConfigError(
            f"--kv-cache-memory {budget} MiB cannot hold one sequence of {max_len} tokens "
            f"({need:.1f} MiB); raise it or lower --max-model-len"
        )
    return num_blocks


def load_engine(config: ServeConfig, metrics: ServeMetrics) -> LLMEngine:
    """Load the checkpoint and build the engine (not yet started)."""
    from ismail_core.checkpoint import load_model

    device, dtype = resolve_placement(config)
    model, tokenizer = load_model(config.checkpoint, device=device, dtype=dtype)
    if config.quantize == "fp8":
        from ismail_core.fp8 import fp8_config
        from ismail_kernels import quantize_model

        # Linear layers -> FP8Linear (block-scaled float8_e4m3fn), except those ismail's model
        # reads as plain weights (the head; wkv_b, which absorbed MLA decoding multiplies into)
        quantize_model(model, fp8_config())
    elif config.quantize is not None:
        raise ServeConfigError(f"--quantize must be fp8, got {config.quantize!r}")
    model_max = int(model.cfg.max_seq_len)
    max_len = config.max_model_len or model_max
    if max_len > model_max:
        raise ServeConfigError(
            f"--max-model-len {max_len} exceeds the model's max_seq_len {model_max}; lower it"
        )
    # one block of the real size: latent attention's per-block memory state is then counted
    # at its share per token, not once per token as a block of one position would count it
    per_token = model.new_cache(1, max(config.block_size, 1), dtype=dtype).bytes_per_token()
    runner = ModelRunner(
        model,
        num_blocks=cache_blocks(config, per_token, max_len),
        block_size=config.block_size,
        enable_prefix_caching=config.enable_prefix_caching,
        device=device,
        dtype=dtype,
    )
    engine_config = EngineConfig(
        max_batch=config.max_batch,
        max_model_len=max_len,
        max_waiting=config.max_waiting,
        prefill_chunk=config.prefill_chunk,
        request_timeout=config.request_timeout,
    )
    return LLMEngine(runner, tokenizer, engine_config, metrics)


def check_classifier_flags(config: ServeConfig) -> None:
    """ServeConfigError for a flag that only means something for a language model, given with a
    classifier checkpoint."""
    for flag, given in (
        ("--quantize", config.quantize is not None),
        ("--kv-cache-memory", config.kv_cache_memory_mib is not None),
    ):
        if given:
            raise ServeConfigError(
                f"{config.checkpoint} is a text classifier, and {flag} is for language models "
                "(a classifier keeps no KV cache and is served unquantized); drop it"
            )


def load_classifier(config: ServeConfig, metrics: ServeMetrics) -> ClassifierRunner:
    """Load a classifier checkpoint behind its worker: --max-batch texts per forward pass,
    --max-model-len tokens per text (default: the model's max_seq_len), --max-waiting texts
    accepted and not yet answered."""
    from ismail_core.classify.predict import TextClassifier

    check_classifier_flags(config)
    device, dtype = resolve_placement(config)
    classifier = TextClassifier.load(config.checkpoint, device=device, dtype=dtype)
    model_max = int(classifier.model.cfg.max_seq_len)
    if config.max_model_len is not None:
        if config.max_model_len > model_max:
            raise ServeConfigError(
                f"--max-model-len {config.max_model_len} exceeds the model's max_seq_len "
                f"{model_max}; lower it"
            )
        classifier.max_len = config.max_model_len
    return ClassifierRunner(classifier, config.max_batch, config.max_waiting, metrics)


def describe_classifier(runner: ClassifierRunner, config: ServeConfig) -> str:
    """The start-up message of a classifier server: what is served where, and its labels."""
    dtype = str(runner.classifier.model.embed.weight.dtype).removeprefix("torch.")
    base = f"http://{config.host}:{config.port}"
    return (
        f"ismail-serve: serving the classifier '{config.served_name}' ({config.checkpoint}) on "
        f"{runner.classifier.device}, dtype {dtype}\n"
        f"  {len(runner.labels)} labels: {', '.join(runner.labels)}; texts cut to "
        f"{runner.max_len} tokens, {runner.batch_size} per forward pass\n"
        f"  classify: POST {base}/v1/classify  (health {base}/health, metrics {base}/metrics)"
    )


def describe_engine(engine: LLMEngine, config: ServeConfig, pages: bool) -> str:
    """The start-up message: what is served where, and how big the KV cache is."""
    runner = engine.runner
    kind = "MLA latent + RoPE key" if getattr(runner.model.cfg, "attention", "") == "mla" else "K/V"
    base = f"http://{config.host}:{config.port}"
    urls = page_urls(base)
    return (
        f"ismail-serve: serving '{config.served_name}' ({config.checkpoint}) on {runner.device}, "
        f"dtype {str(runner.model.embed.weight.dtype).removeprefix('torch.')}"
        f"{', FP8 weights' if config.quantize == 'fp8' else ''}\n"
        f"  KV cache ({kind}): {runner.num_blocks} blocks x {runner.block_size} tokens x "
        f"{runner.cache_bytes_per_token()} B/token = {runner.cache_bytes() / 2**20:.1f} MiB, "
        f"prefix caching {'on' if runner.blocks.enable_prefix_caching else 'off'}; up to "
        f"{engine.config.max_batch} sequences of up to {engine.config.max_model_len} tokens\n"
        f"  OpenAI API: {base}/v1  (health {base}/health, metrics {base}/metrics)"
        + (
            f"\n  chat: {urls['chat']}  tokenizer playground: {urls['tokenizer']}  "
            f"router: {urls['router']}"
            if pages
            else ""
        )
    )


class DrainingServer(uvicorn.Server):
    """uvicorn with a graceful drain on SIGTERM/SIGINT and an exit status of our own."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.exit_code = 0
        self._first_signal_at: float | None = None  # time.monotonic() of the first signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recording the signal (as uvicorn does) keeps it from being re-raised after the
        # shutdown, which would make the exit status 128 + signal instead of 0.
        name = signal.Signals(sig).name
        if self._first_signal_at is not None:
            late = time.monotonic() - self._first_signal_at > REPEAT_WINDOW_S
            if sig == signal.SIGINT and late:
                log.warning("%s while draining: stopping now", name)
                self.should_exit = self.force_exit = True
            else:
                log.info("%s while draining: ignored; a later SIGINT (Ctrl-C) stops now", name)
            return
        self._first_signal_at = time.monotonic()
        log.info("received %s: draining", name)
        if self.state.engine is not None:
            self.state.engine.stop_accepting()
        if self.state.classifier is not None:
            self.state.classifier.stop_accepting()
        self.state.status = STATUS_DRAINING
        threading.Thread(target=self._drain, name="ismail-drain", daemon=True).start()

    def _drain(self) -> None:
        engine, classifier = self.state.engine, self.state.classifier
        if engine is not None and not engine.wait_idle(self.drain_timeout):
            log.warning("drain deadline (%.0f s) passed: aborting what is left", self.drain_timeout)
            engine.abort_all()
            engine.wait_idle(5.0)
        if classifier is not None and not classifier.wait_idle(self.drain_timeout):
            log.warning("drain deadline (%.0f s) passed: stopping mid-request", self.drain_timeout)
        self.should_exit = True

    def fail(self, message: str) -> None:
        """The model could not be loaded: report it and stop with status 1."""
        print(f"ismail-serve: error: {message}", file=sys.stderr, flush=True)
        self.state.status = STATUS_FAILED
        self.exit_code = 1
        self.should_exit = True


def freeze_loaded_objects() -> None:
    """Moves everything alive after loading (modules, the tokenizer's tables, the model's
    Python objects: some 250,000 objects) out of the garbage collector's view. Without this
    every full collection re-scans them, a 150-250 ms pause of every stream on a small CPU;
    with it a collection scans only what requests allocated."""
    gc.collect()
    gc.freeze()


def serve(config: ServeConfig) -> int:
    """Run the service until it is stopped; returns the process exit status."""
    state = new_state(config)
    server: DrainingServer

    def load() -> None:
        try:
            loaded = load_served(config, state)
        except Exception as exc:  # any failure to load is reported, not raised in a thread
            log.debug("model loading failed", exc_info=True)
            server.fail(f"could not load {config.checkpoint}: {type(exc).__name__}: {exc}")
            return
        freeze_loaded_objects()
        if isinstance(loaded, ClassifierRunner):
            start_classifier(state, loaded, config)
        else:
            start_engine(state, loaded, config, app.state.pages_mounted)

    def start_loading() -> None:
        threading.Thread(target=load, name="ismail-load", daemon=True).start()

    app = create_app(state, on_startup=start_loading, on_shutdown=lambda: stop_models(state))
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(uv_config, state, config.drain_timeout)
    server.run()
    return server.exit_code


def new_state(config: ServeConfig) -> ServerState:
    """The server's state before its model loads."""
    from ismail_core.checkpoint import is_classifier

    return ServerState(
        model_name=config.served_name,
        api_key=config.api_key,
        protect_metrics=config.protect_metrics,
        max_request_bytes=config.max_request_bytes,
        metrics=ServeMetrics(),
        is_classifier=is_classifier(config.checkpoint),
        checkpoint=config.checkpoint,
    )


def load_served(config: ServeConfig, state: ServerState) -> LLMEngine | ClassifierRunner:
    """The checkpoint's engine (or classifier worker), not yet started, and the comparison
    tokenizer of --compare-tokenizer into `state`."""
    load = load_classifier if state.is_classifier else load_engine
    loaded = load(config, state.metrics)
    if config.compare_tokenizer is not None:
        state.compare_tokenizer = load_tokenizer(config.compare_tokenizer)
        state.compare_name = Path(config.compare_tokenizer).name
    return loaded


def start_engine(state: ServerState, engine: LLMEngine, config: ServeConfig, pages: bool) -> None:
    """Start the loaded engine and serve with it, unless a signal came while loading."""
    engine.start()
    if state.status == STATUS_DRAINING:
        engine.stop_accepting()
        state.engine = engine
        return
    state.attach(engine)
    print(describe_engine(engine, config, pages), flush=True)


def start_classifier(state: ServerState, runner: ClassifierRunner, config: ServeConfig) -> None:
    """Serve with the loaded classifier, unless a signal came while loading."""
    if state.status == STATUS_DRAINING:
        runner.stop_accepting()
        state.classifier = runner
        return
    state.attach_classifier(runner)
    print(describe_classifier(runner, config), flush=True)


def stop_models(state: ServerState) -> None:
    """Stop the engine's or the classifier's thread (the server is shutting down)."""
    if state.engine is not None:
        state.engine.shutdown()
    if state.classifier is not None:
        state.classifier.shutdown()
