"""The `ismail` command: data, train, finetune, generate, classify, eval, report, export, import.

`uv run ismail train` with no arguments trains the tiny model on the built-in Turkish corpus.
Every command turns bad input into a one-line `error: ...` message and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ismail_core.errors import IsmailError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# generate and eval run where ismail-serve and training do unless told otherwise.
DEVICE_HELP = "auto (CUDA, then Apple's MPS, then the CPU; the default), cpu, cuda, cuda:N or mps"


# ---------------------------------------------------------------------- ismail data
def _add_data(sub: argparse._SubParsersAction) -> None:
    from ismail_core.corpus.prepare import TOKENIZER_TYPES, DataSpec
    from ismail_core.corpus.sources import describe_sources

    d = DataSpec()
    p = sub.add_parser(
        "data",
        help="clean, split and tokenize a corpus into memory-mapped shards",
        description="Clean (NFC, control characters, duplicates, short documents), split "
        "deterministically into train/val, tokenize in parallel and write token shards plus "
        "meta.json into OUT. SOURCE is " + describe_sources() + ".",
    )
    p.add_argument("source", nargs="?", default=d.source, help=f"text source (default {d.source})")
    p.add_argument("--out", default=d.out, help=f"data directory to write (default {d.out})")
    p.add_argument(
        "--tokenizer",
        default=d.tokenizer,
        help="'tr' (shipped tr-tokenizer), a saved tokenizer directory or a tokenizer.json",
    )
    p.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train a new tokenizer (--tokenizer-type) on the training split first",
    )
    p.add_argument(
        "--tokenizer-type",
        choices=TOKENIZER_TYPES,
        default=d.tokenizer_type,
        help="what --train-tokenizer trains: 'tr' (tr-tokenizer, Turkish morphology) or 'bpe' "
        "(byte-level BPE for any language and script, saved as a standard tokenizer.json) "
        f"(default {d.tokenizer_type})",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=d.vocab_size,
        help=f"for --train-tokenizer (special tokens included; default {d.vocab_size})",
    )
    p.add_argument("--text-field", default=d.text_field, help="text column of jsonl/parquet/hf")
    p.add_argument("--split", dest="hf_split", default=d.hf_split, help="split of an hf: source")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--min-chars", type=int, default=d.min_chars, help="drop shorter documents")
    p.add_argument("--num-proc", type=int, default=None, help="tokenization processes")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens, help="tokens per shard")
    p.add_argument("--cache-dir", default=None, help="datasets cache directory")
    p.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from ismail_core.corpus import DataSpec, prepare_data

    fields = DataSpec.__dataclass_fields__
    spec = DataSpec(**{k: v for k, v in vars(args).items() if k in fields})
    if not 0 <= spec.val_fraction < 1:
        raise _usage(f"--val-fraction must be in [0, 1), got {spec.val_fraction}")
    meta = prepare_data(spec)
    tok = meta["tokenizer"]
    print(
        f"wrote {spec.out}: {tok['kind']} tokenizer {tok['fingerprint']} "
        f"({tok['vocab_size']:,} tokens, {meta['dtype']})"
    )
    for name, split in meta["splits"].items():
        print(
            f"  {name:<5} {split['documents']:>8,} documents {split['tokens']:>12,} tokens "
            f"{split['bytes'] / max(split['tokens'], 1):.2f} bytes/token"
        )
    dropped = meta["dropped"]
    print(f"  dropped {dropped['too_short']} short and {dropped['duplicates']} duplicate documents")
    return 0


# ---------------------------------------------------------------------- ismail train
def _add_train(sub: argparse._SubParsersAction) -> None:
    from ismail_core.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: tiny model on the built-in corpus, CPU-friendly)",
        description="Train a model. Options are read from the defaults, then --config FILE "
        "(JSON or YAML with sections run/data/train/optim/eval/checkpoint/log/dist/model), "
        "then flags. With no arguments: the tiny preset on the built-in Turkish corpus "
        "(tokenized on first use). Under torchrun: `torchrun --nproc-per-node N -m ismail_core "
        "train ...`. A run directory with checkpoints is resumed automatically.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=_run_train)


def config_from_args(args: argparse.Namespace, config_cls: type) -> Any:
    """The config: defaults, then --config FILE, then the dotted flags given."""
    from ismail_core.train.config import build_config

    return build_config(*config_layers(args), config_cls=config_cls)


def config_layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The flat {dotted key: value} layers of a command line: --config FILE, then the flags."""
    from ismail_core.train.config import read_config_file

    skip = ("func", "command", "config")
    values = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    layers = [read_config_file(args.config)] if getattr(args, "config", None) else []
    return [*layers, values]


def add_config_flags(p: argparse.ArgumentParser, config_cls: type) -> None:
    """--config FILE and one --section.key flag for every option of a config class."""
    from ismail_core.train.config import option_fields

    p.add_argument("--config", help="JSON or YAML config file", default=argparse.SUPPRESS)
    for key, (kind, text, default) in option_fields(config_cls).items():
        p.add_argument(
            f"--{key}",
            dest=key,
            metavar=_metavar(kind),
            default=argparse.SUPPRESS,
            help=f"{text} (default: {default})" if default is not None else text,
        )


def _metavar(kind: Any) -> str:
    name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
    return name.upper().replace(" | NONE", "")


def _run_train(args: argparse.Namespace) -> int:
    from ismail_core.train import train
    from ismail_core.train.config import TrainConfig

    cfg = config_from_args(args, TrainConfig)
    result = train(cfg)
    if result.interrupted:
        print(f"saved {result.checkpoint}; run the same command again to continue")
        return EXIT_INTERRUPTED
    if is_main_process() and result.checkpoint is not None:
        _print_summary(result, cfg.log.sample_tokens)
    return 0


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_summary(result: Any, sample_tokens: int) -> None:
    from ismail_core.checkpoint import load_checkpoint_tokenizer, load_model
    from ismail_core.generate import generate_hint, generate_text, sample_prompt
    from ismail_core.sampling import SamplingParams

    evals = result.evals
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        print(
            f"validation bits/byte {first['bits_per_byte']:.3f} (step {first['step']}) -> "
            f"{last['bits_per_byte']:.3f} (step {last['step']})"
        )
    if sample_tokens > 0:
        model, tokenizer = load_model(result.checkpoint)
        prompt = sample_prompt(tokenizer)
        params = SamplingParams(temperature=0.8, top_k=40, repetition_penalty=1.1, seed=0)
        text = generate_text(model, tokenizer, prompt, sample_tokens, params)
        print(f"sample: {prompt}{text}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"serve it:   uv run ismail-serve {result.run_dir}")
    tokenizer = load_checkpoint_tokenizer(result.checkpoint)
    print(f"generate:   {generate_hint(result.run_dir, tokenizer)}")


# ---------------------------------------------------------------------- ismail generate
def _add_generate(sub: argparse._SubParsersAction) -> None:
    from ismail_core.sampling import GENERATE_DEFAULTS

    p = sub.add_parser(
        "generate",
        help="generate text from a checkpoint, or chat with it",
        description="Generate a continuation of --prompt with the KV cache, streaming it to "
        "the terminal. With --chat, reply to --prompt as a user message in the checkpoint's "
        "chat template, or, without --prompt, hold a conversation: one user message per line "
        "of stdin, until an empty line or the end of input. CKPT is a checkpoint directory or a "
        "run directory (its latest).",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--prompt", default=None, help="text to continue (--chat: the user message)")
    p.add_argument("--chat", action="store_true", help="chat in the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    d = GENERATE_DEFAULTS
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, help="1 = off")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-stream", action="store_true", help="print only when done")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from ismail_core.checkpoint import load_model, require_language_model
    from ismail_core.generate import stream_text

    require_language_model(args.checkpoint, "generate")
    if args.max_new_tokens < 1:
        raise _usage("--max-new-tokens must be at least 1")
    if args.system is not None and not args.chat:
        raise _usage("--system needs --chat")
    params = _sampling_params(args)
    model, tokenizer = load_model(args.checkpoint, device=args.device)
    if args.chat:
        return _run_chat(args, model, tokenizer, params)
    prompt = args.prompt or ""
    pieces = stream_text(model, tokenizer, prompt, args.max_new_tokens, params, args.stop)
    _show(pieces, args, before=prompt)
    return 0


def _sampling_params(args: argparse.Namespace) -> Any:
    """SamplingParams from the generate options; a usage error for values out of range."""
    from ismail_core.sampling import SamplingParams

    try:
        return SamplingParams(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
    except ValueError as exc:
        raise _usage(str(exc)) from exc


def _show(pieces: Iterator[str], args: argparse.Namespace, before: str = "") -> str:
    """Print `before`, then the generated pieces as they come (all at once under --no-stream);
    returns the generated text."""
    if args.no_stream:
        text = "".join(pieces)
        print(before + text)
        return text
    sys.stdout.write(before)
    shown = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        shown.append(piece)
    sys.stdout.write("\n")
    return "".join(shown)


def _run_chat(args: argparse.Namespace, model: Any, tokenizer: Any, params: Any) -> int:
    """`ismail generate --chat`: reply to --prompt, or converse with the lines of stdin, each
    turn rendering the whole conversation so far."""
    from ismail_core.chat import ChatTemplateError, chat_template

    # Checked before reading stdin, so nobody types into a model that cannot chat.
    if chat_template(tokenizer) is None:
        raise ChatTemplateError(
            f"{args.checkpoint} has no chat template (its tokenizer lacks the chat markers); "
            "fine-tune it for chat with `ismail finetune`"
        )
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    for line in [args.prompt] if args.prompt is not None else _user_lines():
        messages.append({"role": "user", "content": line})
        reply = _chat_turn(args, model, tokenizer, messages, params)
        messages.append({"role": "assistant", "content": reply})
    return 0


def _user_lines() -> Iterator[str]:
    """User messages from stdin, one a line, until an empty line or the end of input; a
    terminal gets a "> " prompt."""
    prompt = ""
    if sys.stdin.isatty():
        print("(an empty line or Ctrl-D ends the conversation)", file=sys.stderr)
        prompt = "> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def _chat_turn(
    args: argparse.Namespace, model: Any, tokenizer: Any, messages: list[dict], params: Any
) -> str:
    """Print the assistant's reply to `messages` and return it."""
    from ismail_core.generate import GenerationError, stream_chat_reply

    pieces = stream_chat_reply(model, tokenizer, messages, args.max_new_tokens, params, args.stop)
    try:
        return _show(pieces, args)
    except GenerationError as exc:
        # Older turns are never dropped to make room: the user decides what to do instead.
        raise GenerationError(f"the conversation does not fit the model's context: {exc}") from exc


# ---------------------------------------------------------------------- ismail eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="bits per byte on some data, or lm-evaluation-harness tasks",
        description="With --data: loss, perplexity and bits per byte of CKPT on DATA, a data "
        "directory from `ismail data` (made with the checkpoint's tokenizer) or a text source "
        "(file, folder, builtin), tokenized with the checkpoint's tokenizer first. With --tasks: "
        "lm-evaluation-harness tasks (needs ismail-core[eval]); prints lm-eval's table.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", help="data directory or text source (bits per byte)")
    p.add_argument("--split", default="val", help="split of a data directory (default val)")
    p.add_argument("--seq-len", type=int, default=0, help="0 = the model's max_seq_len")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=0, help="0 = the whole split")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    lm = p.add_argument_group("lm-evaluation-harness")
    lm.add_argument("--tasks", help="comma-separated lm-eval task names (or globs, YAML files)")
    lm.add_argument("--include-path", help="folder of extra task YAML files (searched first)")
    lm.add_argument("--limit", type=float, help="documents per task (below 1: a fraction)")
    lm.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    lm.add_argument("--output", help="write lm-eval's results as JSON to this file")
    clf = p.add_argument_group(
        "classifiers (from `ismail finetune --task classify`)",
        "With --data (labelled CSV/JSON/JSONL, hf:NAME[:SPLIT] or builtin, the built-in "
        "held-out split): accuracy, macro-F1 and the confusion matrix.",
    )
    clf.add_argument("--text-field", help="text column/key (default: the classifier's)")
    clf.add_argument("--label-field", help="label column/key (default: the classifier's)")
    clf.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from ismail_core.checkpoint import is_classifier, require_language_model

    if args.data is not None and args.tasks is not None:
        raise _usage("pass either --data (bits per byte) or --tasks (lm-evaluation-harness)")
    if args.tasks is not None:
        require_language_model(args.checkpoint, "eval --tasks")
        return _run_eval_tasks(args)
    if args.data is None:
        raise _usage("pass --data DATA (bits per byte) or --tasks NAMES (lm-evaluation-harness)")
    if is_classifier(args.checkpoint):
        from ismail_core.classify.cli import run_classifier_eval

        return run_classifier_eval(args)

    import json
    import tempfile

    from ismail_core.checkpoint import load_model, resolve_checkpoint
    from ismail_core.corpus import DataError, DataSpec, ShardedSplit, load_metadata, prepare_data
    from ismail_core.evaluate import evaluate
    from ismail_core.layout import META_FILE, TOKENIZER_DIR
    from ismail_core.tokenizer import describe_fingerprint

    model, tokenizer = load_model(args.checkpoint, device=args.device)
    seq_len = args.seq_len or model.cfg.max_seq_len
    if seq_len > model.cfg.max_seq_len:
        raise _usage(f"--seq-len {seq_len} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
    with tempfile.TemporaryDirectory(prefix="ismail-eval-") as tmp:
        data_dir, split = Path(args.data), args.split
        if not (data_dir / META_FILE).is_file():
            # A text source: tokenize it all into one split with the checkpoint's tokenizer.
            tok_dir = resolve_checkpoint(args.checkpoint) / TOKENIZER_DIR
            spec = DataSpec(source=args.data, out=tmp, tokenizer=str(tok_dir), val_fraction=0)
            prepare_data(spec)
            data_dir, split = Path(tmp), "train"
        meta = load_metadata(data_dir)
        if meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
            raise DataError(
                f"{data_dir} was tokenized with tokenizer "
                f"{describe_fingerprint(meta['tokenizer']['fingerprint'])}, the checkpoint uses "
                f"{describe_fingerprint(tokenizer.fingerprint)}; pass the raw text instead or "
                "re-tokenize with the checkpoint's tokenizer"
            )
        result = evaluate(
            model,
            ShardedSplit.open(data_dir, split, vocab_size=model.cfg.vocab_size),
            seq_len,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens or None,
            device=next(model.parameters()).device,  # --device as load_model resolved it
        )
    print(json.dumps(result.to_dict()))
    return 0


def _run_eval_tasks(args: argparse.Namespace) -> int:
    """`ismail eval CKPT --tasks ...`: lm-evaluation-harness tasks on the checkpoint."""
    import json

    try:
        import lm_eval  # noqa: F401  (an optional dependency)
    except ImportError as exc:
        raise _usage(
            "--tasks needs lm-evaluation-harness: pip install 'ismail-core[eval]'"
        ) from exc
    from lm_eval.utils import handle_non_serializable, make_table

    from ismail_core.atomic import atomic_write_text
    from ismail_core.harness import HarnessError, IsmailLM, evaluate_tasks

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise _usage("--tasks needs at least one task name")
    try:
        lm = IsmailLM(args.checkpoint, device=args.device, batch_size=args.batch_size)
        results = evaluate_tasks(lm, tasks, args.include_path, args.limit, args.num_fewshot)
    except HarnessError as exc:
        raise _usage(str(exc)) from exc
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        atomic_write_text(args.output, text + "\n")
        print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------- ismail report
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="plots (PNG + HTML page) of a run's metrics",
        description="Plot training/validation loss, learning rate and tokens/s of RUN into "
        "RUN/report (PNG files and index.html); a mixture-of-experts run also gets a routing "
        "section: per MoE layer an expert x step load heatmap, load imbalance (max/mean - 1) "
        "and router entropy, with the numbers in routing.json. With several RUNs, "
        "overlay their validation bits per byte and losses instead (default --out: report).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument(
        "--out", default=None, help="output directory (default RUN/report; several runs: report)"
    )
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ismail_core.layout import REPORT_DIR
    from ismail_core.report import write_comparison, write_report

    if len(args.runs) == 1:
        page = write_report(args.runs[0], args.out)
    else:
        page = write_comparison(args.runs, args.out or REPORT_DIR)
    print(f"wrote {page}")
    return 0


# ---------------------------------------------------------------------- ismail export
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to Hugging Face format, or to an FP8 checkpoint",
        description="--format hf (default): write OUT with config.json + model.safetensors that "
        "transformers.AutoModelForCausalLM.from_pretrained(OUT) loads. --format fp8: write OUT "
        "as an ismail checkpoint whose Linear weights are float8_e4m3fn with 128x128 block "
        "scales (`weight_scale_inv`), for `ismail generate` and `ismail-serve` (needs "
        "ismail-core[fp8]).",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", default="hf", choices=["hf", "fp8"])
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ismail_core.checkpoint import require_language_model

    require_language_model(args.checkpoint, "export")
    if args.format == "fp8":
        from ismail_core.fp8_export import quantize_checkpoint

        out = quantize_checkpoint(args.checkpoint, args.out)
    else:
        from ismail_core.hf_export import export_checkpoint_hf
        from ismail_core.layout import ADAPTER_DIR

        out = export_checkpoint_hf(args.checkpoint, args.out)
        if (out / ADAPTER_DIR).is_dir():
            print(
                f"wrote the base model to {out} and the LoRA adapter to {out / ADAPTER_DIR} "
                "(load both with peft.PeftModel.from_pretrained)"
            )
            return 0
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- ismail import
IMPORT_DTYPES = ("float32", "bfloat16", "float16")


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import a Hugging Face transformers folder as a checkpoint",
        description="Write the transformers model folder HF_DIR (DeepseekV3, Llama, Mistral or "
        "GPT-2; config.json + safetensors or pytorch_model.bin) with its tokenizer "
        "(tokenizer.json, GPT-2's vocab.json + merges.txt, or the tr-tokenizer files of an "
        "`ismail export`) and chat template as the ismail checkpoint OUT, for `ismail generate`, "
        "`eval`, `finetune --base OUT` and `ismail-serve`.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="use this tokenizer instead of HF_DIR's: 'tr', a tokenizer directory or a "
        "tokenizer.json",
    )
    p.add_argument(
        "--dtype", default="float32", choices=IMPORT_DTYPES, help="weight dtype (default float32)"
    )
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    import torch

    from ismail_core.chat import chat_template
    from ismail_core.checkpoint import load_checkpoint_tokenizer
    from ismail_core.generate import generate_hint
    from ismail_core.hf_import import import_checkpoint

    out = import_checkpoint(args.hf_dir, args.out, args.tokenizer, getattr(torch, args.dtype))
    tokenizer = load_checkpoint_tokenizer(out)
    chat = "with" if chat_template(tokenizer) else "without"
    print(
        f"wrote {out}: {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens, {chat} "
        "a chat template"
    )
    print(f"generate: {generate_hint(out, tokenizer)}")
    return 0


# ---------------------------------------------------------------------- entry point
class UsageError(IsmailError, ValueError):
    """A bad command-line value."""


def _usage(message: str) -> UsageError:
    return UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ismail",
        description="Turkish-first DeepSeek-style language models: data, training, generation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_data,
        _add_train,
        _add_generate,
        _add_eval,
        _add_report,
        _add_export,
        _add_import,
    ):
        add(sub)
    from ismail_core.classify.cli import add_classify
    from ismail_core.finetune.cli import add_finetune

    add_finetune(sub)
    add_classify(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `ismail` command; returns the exit status."""
    from ismail_core.runtime import tune_process

    tune_process()  # before torch loads OpenMP
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["train"], ["finetune"]):
        return _main_train(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return _dispatch(args)


def _main_train(argv: list[str]) -> int:
    """`ismail train` and `ismail finetune`: unknown flags get a suggestion of the closest
    option."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        from ismail_core.finetune.config import FinetuneConfig
        from ismail_core.train.config import TrainConfig, closest_key, option_fields

        config_cls = TrainConfig if argv[0] == "train" else FinetuneConfig
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        key = flag.lstrip("-").split("=", 1)[0]
        hint = closest_key(key, list(option_fields(config_cls)), prefix="--")
        print(f"ismail {argv[0]}: error: unknown option {flag!r}{hint}", file=sys.stderr)
        return EXIT_USAGE
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # The user's to fix, so one line without a traceback: every ismail-core error, and a path
    # that does not exist.
    except (IsmailError, FileNotFoundError) as exc:
        print(f"ismail {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else 1
