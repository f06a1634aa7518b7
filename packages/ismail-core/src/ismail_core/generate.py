"""Text generation with the KV cache: token ids, streamed text with stop strings.

Training data separates documents with the end-of-sequence id: an empty prompt starts from one
(the start of a new document), and generation ends when the model emits one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ismail_core.sampling import SamplingParams, StopMatcher, sample_next
from ismail_core.tokenizer import Tokenizer


class GenerationError(ValueError):
    """A request the model cannot serve (too long for its context)."""


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt`; an empty prompt is the document separator alone (if any)."""
    if not prompt and tokenizer.eos_id is not None:
        return [tokenizer.eos_id]
    return list(tokenizer.encode(prompt).ids)


@torch.no_grad()
def generate_ids(
    model: torch.nn.Module,
    ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    stop_id: int | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` sampled ids after `ids`, stopping after `stop_id`.

    The prompt is run once (prefill) into a KV cache; each new token then costs one forward
    pass over a single position.
    """
    context = model.cfg.max_seq_len
    if not ids:
        raise GenerationError("the prompt is empty and the tokenizer has no start token")
    if len(ids) + max_new_tokens > context:
        raise GenerationError(
            f"this model's maximum context length is {context} tokens; the prompt has "
            f"{len(ids)} tokens and {max_new_tokens} new tokens were asked for: shorten the "
            "prompt or lower --max-new-tokens"
        )
    device = model.embed.weight.device
    cache = model.new_cache(1, len(ids) + max_new_tokens)
    generator = params.make_generator(device)
    history = list(ids)
    logits = model(torch.tensor([history], device=device), cache=cache, start_pos=0)
    for _ in range(max_new_tokens):
        token = int(sample_next(logits[:, -1], [params], [generator], [history])[0])
        yield token
        if token == stop_id:
            return
        logits = model(torch.tensor([[token]], device=device), cache=cache, start_pos=len(history))
        history.append(token)


def stream_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the generated text piece by piece (whole characters only), cut at a stop string."""
    decoder = tokenizer.decode_stream(skip_special_tokens=True)
    matcher = StopMatcher(stop)
    eos = tokenizer.eos_id
    ids = prompt_ids(tokenizer, prompt)
    for token in generate_ids(model, ids, max_new_tokens, params or SamplingParams(), eos):
        if token == eos:
            break
        text, stopped = matcher.feed(decoder.step(token))
        if text:
            yield text
        if stopped:
            return
    text, stopped = matcher.feed(decoder.flush())
    tail = text + ("" if stopped else matcher.flush())
    if tail:
        yield tail


def generate_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> str:
    """The generated continuation of `prompt` as one string."""
    return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, params, stop))
