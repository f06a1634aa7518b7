"""Token log-probabilities for prompt scoring (echo) and generated tokens.

The numbers are the log-softmax of the model's own next-token logits, before temperature,
repetition penalty, top-k or top-p (what OpenAI's legacy completions, vLLM and lm-eval mean by
a token's log-probability). Ids past the tokenizer's vocabulary (a vocabulary padded for speed)
are left out, as they are from sampling.

Each token's text is what it adds to the text shown, in context: a stream decoder reads the
chosen tokens in order, so the texts of a sequence's tokens join to its text. The text of an
alternative in `top` is that token decoded after the few ids before its position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from ismail_core.generate import decode_continuation
from ismail_core.tokenizer import TokenizerProtocol

# Largest number of alternatives a request may ask for per position (OpenAI's limit).
MAX_TOP_LOGPROBS = 20
# Ids before a position that an alternative's text is decoded after (a word is rarely longer).
_ALTERNATIVE_CONTEXT = 8


@dataclass
class TokenLogprob:
    """One token's log-probability, its text, and the most likely tokens at its position."""

    token_id: int
    logprob: float | None  # None for a prompt's first token (nothing predicts it)
    top: list[tuple[int, float]]  # (id, log-probability), most likely first
    text: str = ""
    top_texts: list[str] | None = None


def log_softmax(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Log-probabilities (float32) over the tokenizer's ids of logits (..., model vocab)."""
    return torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)


def score(logprobs: torch.Tensor, token_ids: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """TokenLogprob (without texts) of token_ids[i] under row i of `logprobs` (N, vocab)."""
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, ids[:, None])[:, 0].tolist()
    if top_n > 0:
        values, indices = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(token_ids, chosen, tops)]


def alternative_texts(
    tokenizer: TokenizerProtocol, context: Sequence[int], entry: TokenLogprob
) -> None:
    """Fill `entry.top_texts`: each alternative decoded after the last ids of `context`."""
    window = list(context[-_ALTERNATIVE_CONTEXT:])
    entry.top_texts = [decode_continuation(tokenizer, window, [i]) for i, _ in entry.top]


def token_texts(
    tokenizer: TokenizerProtocol, ids: Sequence[int], skip_special: bool = False
) -> list[str]:
    """What each token of `ids` adds to their decoded text, decoded in context (a suffix's
    surface form depends on the text before it): the texts join to the decode of `ids`. A
    token whose text is held back until the next one (the last letter of an alternating
    root) gets "" and the next token both."""
    stream = tokenizer.decode_stream(skip_special_tokens=skip_special)
    texts = [stream.step(i) for i in ids]
    if texts:
        texts[-1] += stream.flush()
    return texts


def with_prompt_texts(
    tokenizer: TokenizerProtocol,
    prompt: Sequence[int],
    scores: list[TokenLogprob],
    skip_special: bool,
) -> list[TokenLogprob]:
    """The prompt's entries, first token included, with texts that join to its decode.

    `scores` are the entries of prompt[1:] (nothing predicts the first token).
    """
    texts = token_texts(tokenizer, prompt, skip_special)
    entries = [TokenLogprob(prompt[0], None, []), *scores]
    for i, (entry, text) in enumerate(zip(entries, texts)):
        entry.text = text
        alternative_texts(tokenizer, prompt[:i], entry)
    return entries
