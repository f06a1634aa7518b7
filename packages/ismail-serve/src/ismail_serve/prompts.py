"""Prompts to token ids: plain text for /v1/completions, the chat template for chat.

Both start with the end-of-sequence id when the tokenizer has one: training data separates
documents with it, so the model reads what follows as the start of a document (the same
convention as `ismail generate`).

The chat template uses the tokenizer's role tokens and is built from ids, never by parsing
marker strings out of text, so with tr-tokenizer a user who types "<|system|>" cannot forge a
role (a Hugging Face tokenizer's encode still splits its added special tokens out of text):

    <eos> <|system|> system text <|end|> <|user|> user text <|end|> ... <|assistant|>

Generation of a chat reply stops at <|end|> (or the tokenizer's end-of-sequence token).
`CHAT_TEMPLATE` is the same template in Jinja, for clients that render it themselves (lm-eval
reads it from /tokenizer_info); a test checks that both give the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ismail_core.generate import prompt_ids

from ismail_serve.errors import bad_request
from ismail_serve.protocol import ChatMessage

ROLE_TOKENS = {
    "system": "<|system|>",
    "developer": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
}
END_TOKEN = "<|end|>"

CHAT_TEMPLATE = (
    "{{ eos_token }}{% for message in messages %}"
    "{% if message['role'] in ['system', 'developer'] %}<|system|>"
    "{% else %}{{ '<|' + message['role'] + '|>' }}{% endif %}"
    "{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _special_id(tokenizer: Any, token: str) -> int:
    idx = getattr(tokenizer, "special_tokens", {}).get(token)
    if idx is None:
        idx = tokenizer.token_to_id(token)
    if idx is None:
        raise bad_request(
            f"This model's tokenizer has no chat role token {token}, so it cannot serve "
            "/v1/chat/completions; use /v1/completions with a plain prompt instead.",
            code="chat_template_unavailable",
        )
    return int(idx)


def check_unicode(text: str, param: str) -> None:
    """400 for text that is not valid Unicode (JSON can carry lone UTF-16 surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            f"'{param}' holds a lone UTF-16 surrogate at position {exc.start}; send valid text.",
            param=param,
        ) from exc


def encode_text(tokenizer: Any, text: str, param: str = "messages") -> list[int]:
    """Token ids of plain text (no special tokens added)."""
    check_unicode(text, param)
    return list(tokenizer.encode(text).ids)


def encode_with_specials(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text in which special-token names ("<|eos|>") stand for their ids, as
    Hugging Face tokenizers read them (vLLM's /tokenize; never used for chat messages)."""
    check_unicode(text, "prompt")
    if getattr(tokenizer, "kind", None) == "tr":
        return list(tokenizer.encode(text, allow_special=True).ids)
    return list(tokenizer.encode(text).ids)  # `tokenizers` splits special tokens out itself


def chat_template(tokenizer: Any) -> str | None:
    """The chat template in Jinja, or None when the tokenizer lacks the role tokens."""
    names = [*ROLE_TOKENS.values(), END_TOKEN]
    if getattr(tokenizer, "eos_id", None) is None or any(
        tokenizer.token_to_id(n) is None for n in names
    ):
        return None
    return CHAT_TEMPLATE


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a completion prompt: the document separator, then the text."""
    check_unicode(text, "prompt")
    return prompt_ids(tokenizer, text)


def render_chat(
    tokenizer: Any, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation in the chat template (see the module docstring)."""
    end = _special_id(tokenizer, END_TOKEN)
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    for i, message in enumerate(messages):
        message.check_content(i)
        ids.append(_special_id(tokenizer, ROLE_TOKENS[message.role]))
        ids.extend(encode_text(tokenizer, message.text()))
        ids.append(end)
    if add_generation_prompt:
        ids.append(_special_id(tokenizer, ROLE_TOKENS["assistant"]))
    return ids


def longest_token_chars(tokenizer: Any) -> int | None:
    """The most characters of input one token can stand for, or None when no such bound is
    known; `max_model_len` times this is the longest text that can still fit the context.

    tr-tokenizer is lossless and does not normalize: every character of the input is spelled
    by some token, and a token spells at most as many characters as its vocabulary text (a
    shared suffix "+(y)AbilIyorsInIz" spells fewer than its archiphonemic form, a byte token
    "<0xC3>" less than one character, a case marker none). So a text of C characters needs at
    least C / longest tokens. (18 for the shipped vocabulary: a run of 16 spaces or a suffix
    form.) Other tokenizers may normalize or drop text (BERT's pre-tokenizer drops spaces), so
    no character count bounds their tokens; for them prompts are only bounded by
    --max-request-bytes."""
    if getattr(tokenizer, "kind", None) != "tr":
        return None
    return max(len(tokenizer.id_to_token(i) or "") for i in range(int(tokenizer.vocab_size)))


def stop_token_ids(tokenizer: Any, chat: bool) -> frozenset[int]:
    """Tokens that end generation: end-of-sequence, and <|end|> for chat replies."""
    ids = set()
    if getattr(tokenizer, "eos_id", None) is not None:
        ids.add(int(tokenizer.eos_id))
    if chat:
        ids.add(_special_id(tokenizer, END_TOKEN))
    return frozenset(ids)
