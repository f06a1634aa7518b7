"""Text generation with the KV cache: token ids, streamed text with stop strings.

Training data separates documents with the end-of-sequence id: a prompt starts with one (the
start of a new document), and generation ends when the model emits one.

Generated text is always decoded with the prompt as its left context (`ContinuationText`):
tr-tokenizer spells a shared suffix from the word before it, so the ids of a continuation
alone decode to the wrong Turkish (Cumhuriyeti + dative is "ye", not the context-free "ya").
`ismail generate`, the Python API and ismail-serve all stream text through it.

Chat (`chat_reply`, `stream_chat_reply`, `ismail generate --chat`) renders the conversation
with the chat template stored with the checkpoint's tokenizer (`ismail_core.chat`, the same
ids fine-tuning trained on and ismail-serve feeds the model) and ends the reply at the end of
the assistant's turn.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch

from ismail_core.chat import end_of_turn_ids, render_chat
from ismail_core.errors import IsmailError
from ismail_core.model import Transformer
from ismail_core.model.cache import blocks_for
from ismail_core.model.runner import ModelRunner
from ismail_core.sampling import SamplingParams, StopMatcher, sample_next
from ismail_core.tokenizer import Tokenizer


class GenerationError(IsmailError, ValueError):
    """A request the model cannot serve (too long for its context)."""


def sample_prompt(tokenizer: Tokenizer) -> str:
    """A prompt for showing what a model writes: a Turkish opening for a tr-tokenizer model,
    else none (the model starts a document, in whatever language it learned)."""
    return "Türk milleti" if tokenizer.kind == "tr" else ""


def generate_hint(checkpoint: object, tokenizer: Tokenizer) -> str:
    """The `ismail generate` command line that shows what `checkpoint` writes."""
    prompt = sample_prompt(tokenizer)
    return f"uv run ismail generate {checkpoint}" + (f" --prompt '{prompt}'" if prompt else "")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` after the id documents start with (`document_start_id`: the
    end-of-sequence id that separates ismail's training documents), if there is one."""
    ids = list(tokenizer.encode(prompt).ids)
    start = tokenizer.document_start_id
    return ids if start is None else [start, *ids]


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


class BatchGeneration:
    """Several prompts generated together through one paged cache, one batched forward per step.

    Each prompt is admitted to a `ModelRunner` (the engine ismail-serve decodes with) and
    prefilled alone, one after another, so no memory goes to padding and a prompt that shares a
    prefix with an earlier one (a system prompt, few-shot examples) reuses its cached blocks
    and prefills only the rest. Then every `step()` samples one token for each running row,
    each with its own sampling parameters and generator, and runs the running rows through the
    model at once (on a CPU through the fused decode step, `fused_decode=False` turns it off:
    see `ModelRunner`). A row ends after `stop_id` (an id, or a collection of ids: a chat turn has
    two ends), after `max_new_tokens`, or when the caller calls `end(row)` (a stop string found
    in its text).
    """

    @torch.no_grad()
    def __init__(
        self,
        model: Transformer,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        params: Sequence[SamplingParams],
        stop_id: int | Collection[int] | None = None,
        block_size: int = 16,
        fused_decode: bool | None = None,
    ) -> None:
        context = model.cfg.max_seq_len
        for ids in prompts:
            if not ids:
                raise GenerationError("the prompt is empty and the tokenizer has no start token")
            if len(ids) + max_new_tokens > context:
                raise GenerationError(
                    f"this model's maximum context length is {context} tokens; the prompt has "
                    f"{len(ids)} tokens and {max_new_tokens} new tokens were asked for: shorten "
                    "the prompt or lower --max-new-tokens"
                )
        self.max_new_tokens = max_new_tokens
        self.stop_ids = _id_set(stop_id)
        self.params = list(params)
        # room for every row at full length, as if nothing were shared
        num_blocks = sum(blocks_for(len(ids) + max_new_tokens, block_size) for ids in prompts)
        self.runner = ModelRunner(model, num_blocks, block_size, fused_decode=fused_decode)
        self.generators = [p.make_generator(self.runner.device) for p in self.params]
        self.history = [list(ids) for ids in prompts]
        self.new_tokens = [0] * len(prompts)
        self.running = list(range(len(prompts)))
        self.logits = {row: self._prefill(row, ids) for row, ids in enumerate(prompts)}

    def _prefill(self, row: int, ids: Sequence[int]) -> torch.Tensor:
        """Admit a prompt and compute what its cached prefix lacks; its next-token logits."""
        cached = self.runner.blocks.allocate(row, ids)
        return self.runner.forward([row], [ids[cached:]], [cached], last_only=True)[0]

    def end(self, row: int) -> None:
        """Stop generating for `row` (its cache blocks are released)."""
        if row in self.running:
            self.running.remove(row)
            self.runner.blocks.free(row)

    @torch.no_grad()
    def step(self) -> dict[int, int]:
        """Sample one token for each running row and feed the ones that go on to the model;
        returns {row: token}. Empty once every row has ended."""
        rows = list(self.running)
        if not rows:
            return {}
        logits = torch.stack([self.logits[r] for r in rows])
        params = [self.params[r] for r in rows]
        generators = [self.generators[r] for r in rows]
        tokens = sample_next(logits, params, generators, [self.history[r] for r in rows]).tolist()
        for row, token in zip(rows, tokens):
            self.history[row].append(token)
            self.new_tokens[row] += 1
            if token in self.stop_ids or self.new_tokens[row] >= self.max_new_tokens:
                self.end(row)
        for row in self.running:
            self.runner.blocks.append(row, self.history[row][-1])
        if self.running:
            out = self.runner.forward(
                list(self.running),
                [[self.history[r][-1]] for r in self.running],
                [len(self.history[r]) - 1 for r in self.running],
                last_only=True,
            )
            self.logits = dict(zip(self.running, out))
        return dict(zip(rows, tokens))


def _id_set(ids: int | Collection[int] | None) -> frozenset[int]:
    """One id, several or none, as a set."""
    if ids is None:
        return frozenset()
    return frozenset([ids]) if isinstance(ids, int) else frozenset(ids)


def generate_ids(
    model: Transformer,
    ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    stop_id: int | Collection[int] | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` sampled ids after `ids`, stopping after `stop_id` (an id or
    a collection of ids).

    The prompt is run once (prefill) into a paged cache; each new token then costs one
    forward pass over a single position.
    """
    batch = BatchGeneration(model, [ids], max_new_tokens, [params], stop_id)
    while step := batch.step():
        yield step[0]


def _stream_after(
    model: Transformer,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams | None,
    stop: Sequence[str] | None,
    end_ids: Collection[int],
) -> Iterator[str]:
    """Yield the text generated after the prompt `ids` piece by piece (whole characters only,
    decoded with the prompt as context), until an id in `end_ids` (not shown), a stop string
    (cut before it) or `max_new_tokens`."""
    text = ContinuationText(tokenizer, ids, stop or ())
    for token in generate_ids(model, ids, max_new_tokens, params or SamplingParams(), end_ids):
        if token in end_ids:
            break
        piece, stopped = text.push(token)
        if piece:
            yield piece
        if stopped:
            return
    tail, _ = text.finish()
    if tail:
        yield tail


def stream_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the text generated after `prompt` piece by piece (whole characters only, decoded
    with the prompt as context), cut before a stop string; the end-of-sequence id ends it."""
    ids = prompt_ids(tokenizer, prompt)
    yield from _stream_after(
        model, tokenizer, ids, max_new_tokens, params, stop, _id_set(tokenizer.eos_id)
    )


def generate_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> str:
    """The generated continuation of `prompt` as one string."""
    return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, params, stop))


def stream_chat_reply(
    model: Transformer,
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the assistant's reply to `messages` ({"role", "content"} dicts) piece by piece.

    The conversation is rendered in the tokenizer's chat template with the assistant marker
    after it (`render_chat`; ChatTemplateError when the tokenizer has no template), and the
    reply ends at an end-of-turn id or before a stop string. Nothing is trimmed: a conversation
    that leaves no room for `max_new_tokens` raises GenerationError."""
    ids = render_chat(tokenizer, messages, add_generation_prompt=True).ids
    ends = end_of_turn_ids(tokenizer)
    yield from _stream_after(model, tokenizer, ids, max_new_tokens, params, stop, ends)


def chat_reply(
    model: Transformer,
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 64,
    params: SamplingParams | None = None,
    stop: Sequence[str] | None = None,
) -> str:
    """The assistant's reply to `messages` as one string (see `stream_chat_reply`)."""
    return "".join(stream_chat_reply(model, tokenizer, messages, max_new_tokens, params, stop))
