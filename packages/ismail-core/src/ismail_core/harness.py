"""lm-evaluation-harness adapter: an ismail checkpoint as lm-eval's model `"ismail"`.

Importing this module registers the model, so that in the same process
`lm_eval.simple_evaluate(model="ismail", model_args="pretrained=CKPT", ...)` finds it.
lm-eval 0.4.x has no plugin entry point for models: the `lm_eval` command only knows the
models it lists itself, so `python -m ismail_core.harness ARGS` runs lm-eval's command line
(same ARGS) with this model registered, and `ismail eval CKPT --tasks ...` runs tasks directly.

Contexts are scored and continued exactly as lm-eval tokenizes them, with no separator in
front (an empty context gets the end-of-sequence id, the document separator the model was
trained with): the same ids that lm-eval's `local-completions` model sends to ismail-serve with
`tokenizer_backend=remote`, so the two paths agree. Log-probabilities are the log-softmax of the
raw logits in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval
import lm_eval.models  # noqa: F401  (lm-eval's own models; see the registration below)
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.models.utils import Collator, normalize_gen_kwargs
from lm_eval.utils import (
    get_rolling_token_windows,
    make_disjoint_window,
    simple_parse_args_string,
)
from tqdm import tqdm

from ismail_core.checkpoint import load_model, require_language_model
from ismail_core.errors import IsmailError
from ismail_core.generate import BatchGeneration, ContinuationText
from ismail_core.runtime import resolve_device
from ismail_core.sampling import SamplingParams

logger = logging.getLogger(__name__)

MODEL_NAME = "ismail"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks
# gen_kwargs that map onto SamplingParams; do_sample is folded into temperature by lm-eval
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")

# (context, continuation) strings (None for rolling windows), context ids, continuation ids
Request = tuple[tuple[str, str] | None, list[int], list[int]]


class HarnessError(IsmailError, ValueError):
    """A model argument or task request this adapter cannot serve; the message says why."""


class IsmailLM(TemplateLM):
    """An ismail checkpoint behind lm-eval's LM interface.

    pretrained: checkpoint or run directory; device: default cuda if available, else mps, else cpu;
    dtype: "float32", "bfloat16", ... or "auto" (as stored); batch_size: sequences per forward
    pass; max_length: context in tokens (default and upper bound: the model's max_seq_len).
    max_batch_size is accepted because lm-eval passes it, and unused (no automatic batch size).
    """

    def __init__(
        self,
        pretrained: str | Path,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self._device = resolve_device(device or "auto")
        require_language_model(pretrained, "eval --tasks")
        self.model, self.tokenizer = load_model(pretrained, self._device, _dtype(dtype))
        self._batch_size = _positive_int(batch_size, "batch_size")
        self._max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        context = self.model.cfg.max_seq_len
        self._max_length = _positive_int(max_length or context, "max_length")
        if self._max_length > context:
            raise HarnessError(f"max_length {self._max_length} exceeds the model's {context}")
        eos_id = self.tokenizer.eos_id
        if eos_id is None:
            raise HarnessError("the checkpoint's tokenizer has no end-of-sequence token")
        self._eos_id = eos_id

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's constructor from "key=value,..."; model_args win over its CLI settings."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """Like lm-eval's, except that model_args override the command line's batch size and
        device (lm-eval passes both always, e.g. device=cuda:0 by default; its own merge would
        fail with a duplicate keyword when model_args name them too)."""
        settings = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**settings, **arg_dict})

    # ------------------------------------------------------------------ lm-eval's properties
    @property
    def eot_token_id(self) -> int:
        """The end-of-sequence id: where generation stops."""
        return self._eos_id

    @property
    def prefix_token_id(self) -> int:
        """The id documents start with (lm-eval's name): prefix of empty contexts and of
        rolling windows. The end-of-sequence id for models ismail trained."""
        start = self.tokenizer.document_start_id
        return self._eos_id if start is None else start  # None: the tokenizer names no start

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm-eval's request cache keys."""
        return f"ismail-{self.tokenizer.kind}-{self.tokenizer.fingerprint}"

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        """Token ids of `string`; no special tokens are added (see the module docstring)."""
        return list(self.tokenizer.encode(string).ids)

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(
        self, requests: Sequence[Request], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, whether greedy decoding yields the continuation) per
        request. `TemplateLM.loglikelihood` encodes the pairs the way lm-eval's HF model does."""
        # longest first, like lm-eval's HF model: similar lengths share a batch (less padding)
        # and a too-large batch fails at once instead of at the end
        order = Collator(list(requests), sort_fn=lambda r: (-len(r[1]) - len(r[2]), r[1] + r[2]))
        results: list[tuple[float, bool]] = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood") as bar:
            for batch in order.get_batched(n=self.batch_size):
                scored = self._score_batch([self._window(ctx, cont) for _, ctx, cont in batch])
                for (strings, _, _), answer in zip(batch, scored):
                    if strings is not None:  # rolling windows are cached per document instead
                        self.cache_hook.add_partial("loglikelihood", strings, answer)
                results.extend(scored)
                bar.update(len(batch))
        return order.get_original(results)

    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """(ids, n): the sequence, left-truncated to max_length + 1 ids (the model reads all but
        the last), and the number of continuation ids at its end."""
        if not continuation:
            raise HarnessError("a loglikelihood request has an empty continuation")
        if len(continuation) > self.max_length:
            raise HarnessError(
                f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}"
            )
        ids = (context + continuation)[-(self.max_length + 1) :]
        return ids, len(continuation)

    @torch.no_grad()
    def _score_batch(self, windows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """One forward pass over right-padded windows (causal attention: padding after a
        sequence never changes its logits)."""
        width = max(len(ids) - 1 for ids, _ in windows)
        inputs = torch.full((len(windows), width), self.prefix_token_id, dtype=torch.long)
        for row, (ids, _) in enumerate(windows):
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        logits = self.model(inputs.to(self.device))
        scores = []
        for row, (ids, n) in enumerate(windows):
            end = len(ids) - 1  # position end-1 predicts the last id
            logprobs = F.log_softmax(logits[row, end - n : end].float(), dim=-1)
            target = torch.tensor(ids[-n:], device=logprobs.device)
            picked = logprobs.gather(-1, target[:, None]).sum()
            greedy = bool((logprobs.argmax(-1) == target).all())
            scores.append((float(picked), greedy))
        return scores

    def loglikelihood_rolling(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[float]:
        """Log-likelihood of whole documents in lm-eval's disjoint rolling windows of
        max_length tokens, the first conditioned on the document separator."""
        windows: list[Request] = []
        owners: list[int] = []
        for index, (text,) in enumerate(req.args for req in requests):
            ids = self.tok_encode(text, add_special_tokens=False)
            for context, target in map(
                make_disjoint_window,
                get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, 1),
            ):
                windows.append((None, context, target))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """One continuation per request, generated with the KV cache in batches of requests
        that share their gen_kwargs, each cut before its first `until` string; greedy unless
        gen_kwargs sample (do_sample / temperature)."""
        # longest context first, like lm-eval's HF model; batches never mix gen_kwargs
        order = Collator(
            [req.args for req in requests],
            sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
            group_by="gen_kwargs",
            group_fn=lambda args: args[1],
        )
        results: list[str] = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until") as bar:
            for batch in order.get_batched(n=self.batch_size):
                contexts = [context for context, _ in batch]
                for context, text in zip(contexts, self._generate(contexts, batch[0][1])):
                    self.cache_hook.add_partial("generate_until", (context, batch[0][1]), text)
                    results.append(text)
                bar.update(len(batch))
        return order.get_original(results)

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        """The texts generated after `contexts` (one batch), each decoded with its prompt as
        left context (tr-tokenizer spells suffixes from the word before them)."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = [s for s in kwargs.pop("until") if s]
        max_new = kwargs.pop("max_gen_toks")
        if max_new >= self.max_length:
            raise HarnessError(
                f"max_gen_toks {max_new} leaves no room for a prompt in max_length "
                f"{self.max_length}: lower the task's max_gen_toks"
            )
        # left-truncate like lm-eval's HF model: the most recent context matters most
        keep = self.max_length - max_new
        prompts = [(self.tok_encode(c) or [self.prefix_token_id])[-keep:] for c in contexts]
        params = _params(kwargs)
        batch = BatchGeneration(
            self.model, prompts, max_new, [params] * len(prompts), self.eot_token_id
        )
        texts = [ContinuationText(self.tokenizer, ids, until) for ids in prompts]
        pieces: list[list[str]] = [[] for _ in prompts]
        stopped: set[int] = set()  # rows cut at a stop string: nothing more to write
        while step := batch.step():
            for row, token in step.items():
                if token == self.eot_token_id:
                    continue
                piece, hit = texts[row].push(token)
                pieces[row].append(piece)
                if hit:
                    stopped.add(row)
                    batch.end(row)
        for row in set(range(len(prompts))) - stopped:
            pieces[row].append(texts[row].finish()[0])
        return ["".join(p) for p in pieces]


def _params(kwargs: dict) -> SamplingParams:
    """SamplingParams from normalized gen_kwargs; unknown keys are logged and ignored."""
    ignored = sorted(set(kwargs) - set(_SAMPLING_KEYS) - {"do_sample"})
    if ignored:
        logger.warning("ismail: ignoring generation arguments %s", ignored)
    return SamplingParams(**{k: kwargs[k] for k in _SAMPLING_KEYS if k in kwargs})


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """torch dtype from lm-eval's dtype argument; None or "auto" keep the stored weights."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise HarnessError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return value


def _positive_int(value: int | str, name: str) -> int:
    """An integer argument >= 1 (lm-eval passes numbers from its command line as strings)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise HarnessError(f"{name} must be at least 1, got {number}")
    return number


# ---------------------------------------------------------------------- tasks
def task_manager(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """An lm-eval TaskManager that knows every name in `tasks` (names, globs or YAML paths).

    Indexing lm-eval's ~15,000 built-in tasks takes tens of seconds, so a local folder that
    holds all the tasks is indexed alone.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise HarnessError(f"include path {include_path} is not a directory")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if not _unknown_tasks(local, tasks):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = _unknown_tasks(manager, tasks)
    if unknown:
        where = "lm-eval's tasks" + ("" if include_path is None else f" or {include_path}")
        raise HarnessError(
            f"unknown task {', '.join(unknown)}: not in {where}; `lm-eval ls tasks` lists them"
        )
    return manager


def _unknown_tasks(manager: Any, tasks: Sequence[str]) -> list[str]:
    """The names in `tasks` that are neither known to `manager` nor YAML files."""
    return [t for t in tasks if not manager.match_tasks([t]) and not Path(t).is_file()]


def evaluate_tasks(
    lm: IsmailLM,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval tasks on `lm`; returns lm-eval's results dict (with "samples" when
    log_samples is set: per-document requests and responses)."""
    manager = task_manager(tasks, include_path)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
    )


def run_lm_eval_cli() -> None:
    """lm-eval's own command line with `--model ismail` available."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


# lm-eval's get_model() imports its own models only into an empty registry, which is why
# lm_eval.models is imported above, before this entry. The entry is a lazy "module:class"
# path rather than the class: under `python -m ismail_core.harness` this file runs as __main__,
# and the path makes lm-eval use the one class of the importable module.
model_registry.register(MODEL_NAME, target="ismail_core.harness:IsmailLM")

if __name__ == "__main__":
    run_lm_eval_cli()
