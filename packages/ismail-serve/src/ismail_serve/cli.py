"""`ismail-serve CKPT`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ismail_serve.config import API_KEY_ENV, ServeConfig, add_serve_flags


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options say in words what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """`ismail-serve`'s arguments: one for each ServeConfig field (see config.py)."""
    p = argparse.ArgumentParser(
        prog="ismail-serve",
        description="Serve an ismail checkpoint over an OpenAI-compatible HTTP API "
        "(/v1/completions, /v1/chat/completions, streaming, continuous batching); a classifier "
        "checkpoint (ismail finetune --task classify) answers POST /v1/classify instead.",
        formatter_class=_DefaultsHelpFormatter,
    )
    add_serve_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Check the flags and the checkpoint, then serve until stopped; the exit status."""
    args = build_parser().parse_args(argv)
    from ismail_core.checkpoint import is_classifier, resolve_checkpoint
    from ismail_core.errors import IsmailError

    from ismail_serve.errors import ServeError
    from ismail_serve.server import check_classifier_flags, resolve_placement, serve

    config = ServeConfig(**vars(args))
    try:
        resolve_checkpoint(args.checkpoint)
        resolve_placement(config)
        if is_classifier(args.checkpoint):
            check_classifier_flags(config)
    except (ServeError, IsmailError) as exc:  # the user's to fix: one line, no traceback
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
