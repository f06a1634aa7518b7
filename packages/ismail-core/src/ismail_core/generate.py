"""Text generation with the KV cache: token ids, streamed text with stop strings.

Training data separates documents with the end-of-sequence id: a prompt starts with one (the
start of a new document), and generation ends when the model emits one.

Generated text is always decoded with the prompt as its left context (`ContinuationText`):
tr-tokenizer spells a shared suffix from the word before it, so the ids of a continuation
alone decode to the wrong Turkish (Cumhuriyeti + dative is "ye", not the context-free "ya").
`ismail generate`, the Python API and ismail-serve all stream text through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ismail_core.sampling import SamplingParams, StopMatcher, sample_next
from ismail_core.tokenizer import Tokenizer


class GenerationError(ValueError):
    """A request the model cannot serve (too long for its context)."""


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` after the document separator (the end-of-sequence id, if any)."""
    ids = list(tokenizer.encode(prompt).ids)
    return ids if tokenizer.eos_id is None else [tokenizer.eos_id, *ids]


class ContinuationText:
    """Generated ids in, text to show out: decoded after `context` (the prompt's ids) as its
    left context, whole characters only, with any tail that could still become a stop string
    held back. What `push` returns, concatenated with `finish`, is the text the generated ids
    add after the prompt, cut before the first stop string. `last_piece` is the decoder's text
    for the last id pushed (or the text `finish` released), before stop strings are applied.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        context: Sequence[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._decoder = tokenizer.decode_stream(
            skip_special_tokens=skip_special_tokens, context=context
        )
        self._stops = StopMatcher(list(stop))
        self.last_piece = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one generated id; return (text to show now, whether a stop string was hit)."""
        self.last_piece = self._decoder.step(token_id)
        return self._stops.feed(self.last_piece)

    def finish(self) -> tuple[str, bool]:
        """End of generation: return the remaining text and whether it completed a stop string."""
        self.last_piece = self._decoder.flush()
        text, stopped = self._stops.feed(self.last_piece)
        if stopped:
            return text, True
        return text + self._stops.flush(), False


def decode_continuation(
    tokenizer: Tokenizer,
    context: Sequence[int],
    new_ids: Sequence[int],
    skip_special_tokens: bool = True,
) -> str:
    """The text `new_ids` add after `context`, decoded with the context (see ContinuationText)."""
    decoder = tokenizer.decode_stream(skip_special_tokens=skip_special_tokens, context=context)
    return "".join(decoder.step(i) for i in new_ids) + decoder.flush()


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
    """Yield the text generated after `prompt` piece by piece (whole characters only, decoded
    with the prompt as context), cut before a stop string."""
    eos = tokenizer.eos_id
    ids = prompt_ids(tokenizer, prompt)
    text = ContinuationText(tokenizer, ids, stop or ())
    for token in generate_ids(model, ids, max_new_tokens, params or SamplingParams(), eos):
        if token == eos:
            break
        piece, stopped = text.push(token)
        if piece:
            yield piece
        if stopped:
            return
    tail, _ = text.finish()
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
