"""Prompts to token ids: plain text for /v1/completions, the chat template for chat.

The chat template uses the tokenizer's role tokens and is built from ids, never by parsing
marker strings out of text, so a user who types "<|system|>" cannot forge a role:

    <|system|> system text <|end|> <|user|> user text <|end|> ... <|assistant|>

Generation of a chat reply stops at <|end|> (or the tokenizer's end-of-sequence token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ismail_serve.errors import bad_request
from ismail_serve.protocol import ChatMessage

ROLE_TOKENS = {
    "system": "<|system|>",
    "developer": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
}
END_TOKEN = "<|end|>"


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


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of plain text (no special tokens added)."""
    return list(tokenizer.encode(text).ids)


def render_chat(
    tokenizer: Any, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation in the chat template (see the module docstring)."""
    end = _special_id(tokenizer, END_TOKEN)
    ids: list[int] = []
    for message in messages:
        ids.append(_special_id(tokenizer, ROLE_TOKENS[message.role]))
        ids.extend(encode_text(tokenizer, message.text()))
        ids.append(end)
    if add_generation_prompt:
        ids.append(_special_id(tokenizer, ROLE_TOKENS["assistant"]))
    return ids


def stop_token_ids(tokenizer: Any, chat: bool) -> frozenset[int]:
    """Tokens that end generation: end-of-sequence, and <|end|> for chat replies."""
    ids = set()
    if getattr(tokenizer, "eos_id", None) is not None:
        ids.add(int(tokenizer.eos_id))
    if chat:
        ids.add(_special_id(tokenizer, END_TOKEN))
    return frozenset(ids)
