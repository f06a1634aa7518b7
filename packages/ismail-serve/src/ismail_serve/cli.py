"""`ismail-serve CKPT`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ismail_serve.limits import DEFAULT_MAX_REQUEST_BYTES

API_KEY_ENV = "ISMAIL_API_KEY"


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options say in words what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ismail-serve",
        description="Serve an ismail checkpoint over an OpenAI-compatible HTTP API "
        "(/v1/completions, /v1/chat/completions, streaming, continuous batching); a classifier "
        "checkpoint (ismail finetune --task classify) answers POST /v1/classify instead.",
        formatter_class=_DefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint directory (or a run directory: uses its latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--served-model-name",
        dest="model_name",
        default=None,
        help="model name clients must send (default: the checkpoint directory's name)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 routes (if not given: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--protect-metrics",
        action="store_true",
        help="with an API key, require it on /metrics, /openapi.json, /docs and /redoc too "
        "(by default, as in vLLM, the key covers the API routes only; /health is always open)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="BYTES",
        help="largest request body accepted; larger ones get 413 before they are read",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and KV-cache dtype (auto: bfloat16 where the device runs it natively, "
        "else float16 on a GPU, else float32)",
    )
    p.add_argument(
        "--quantize",
        default=None,
        choices=["fp8"],
        help="quantize Linear weights to block-scaled FP8 through ismail-kernels (Triton on "
        "FP8 GPUs, a PyTorch reference elsewhere)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="sequences run at once, as the KV cache allows (a classifier: texts per forward pass)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="tokens per sequence, prompt + output (a classifier: tokens read of each text; "
        "default: the model's max_seq_len)",
    )
    p.add_argument(
        "--kv-cache-memory",
        dest="kv_cache_memory_mib",
        type=float,
        default=None,
        metavar="MIB",
        help="KV-cache size (default: room for --max-batch sequences of --max-model-len)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=16,
        help="tokens per KV-cache block (the unit of allocation and of prefix reuse)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the cached blocks of a prompt prefix seen before (on by default)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="sequences (a classifier: texts) that may wait; beyond that requests get 429",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=512,
        help="prompt tokens prefilled per engine step (chunked prefill)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may run before it is ended (0: no limit)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let running requests finish after SIGTERM/SIGINT",
    )
    p.add_argument(
        "--compare-tokenizer",
        default=None,
        metavar="PATH",
        help="a tokenizer (e.g. a plain BPE tokenizer.json) the tokenizer playground shows "
        "side by side with the model's",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ismail_core.checkpoint import CheckpointError, is_classifier, resolve_checkpoint

    from ismail_serve.server import ServeConfig, check_classifier_flags, resolve_placement, serve

    config = ServeConfig(**vars(args))
    try:
        resolve_checkpoint(args.checkpoint)
        resolve_placement(config)
        if is_classifier(args.checkpoint):
            check_classifier_flags(config)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        print(f"ismail-serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if config.api_key is None:  # read here, not as the flag's default, so --help never shows it
        config.api_key = os.environ.get(API_KEY_ENV) or None
    if config.request_timeout == 0:
        config.request_timeout = None
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
