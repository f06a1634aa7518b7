"""The chat template: one Jinja definition, rendered to token ids here and by transformers.

A conversation becomes

    <eos> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...

The leading end-of-sequence id is the document separator of the pretraining data, so the
model reads the conversation as a new document. The template is stored with a checkpoint's
tokenizer (`chat_template.jinja` in its `tokenizer/` folder, written by `ismail finetune`);
tokenizers without a stored one use `DEFAULT_CHAT_TEMPLATE` when they have the markers.

`render_chat` renders that same Jinja text with each message's content replaced by a
sentinel, encodes the template text between contents with special-token names read as their
ids, and encodes each content on its own with special names left as text. The ids are those
of transformers' `apply_chat_template` on the same template (a test checks it) while a user
who types "<|system|>" into a message cannot forge a role with tr-tokenizer. The same pass
marks the ids a fine-tuned model learns to produce: each assistant content and the end of its
turn.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tr_tokenizer.vocab import CHAT_MARKERS

from ismail_core.errors import IsmailError

SYSTEM, USER, ASSISTANT, END_TOKEN = CHAT_MARKERS
ROLES = ("system", "developer", "user", "assistant")

DEFAULT_CHAT_TEMPLATE = (
    "{{ eos_token }}{% for message in messages %}"
    "{% if message['role'] in ['system', 'developer'] %}<|system|>"
    "{% else %}{{ '<|' + message['role'] + '|>' }}{% endif %}"
    "{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Private-use characters mark where each message's content goes in the rendered template.
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


class ChatTemplateError(IsmailError, ValueError):
    """A conversation or tokenizer the chat template cannot render; says what to change."""


@dataclass
class RenderedChat:
    """Token ids of a conversation; `trainable[i]` is True for ids of assistant turns (the
    content and the end-of-turn marker after it), the ids a chat model learns to produce."""

    ids: list[int]
    trainable: list[bool]


def has_chat_markers(tokenizer: Any) -> bool:
    """Whether the tokenizer has the role and end-of-turn tokens and an end-of-sequence id."""
    return tokenizer.eos_id is not None and all(
        tokenizer.token_to_id(t) is not None for t in CHAT_MARKERS
    )


def chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's chat template in Jinja: the stored one, else the default when the
    tokenizer has the markers, else None (the model cannot chat)."""
    stored = getattr(tokenizer, "chat_template", None)
    if stored:
        return stored
    return DEFAULT_CHAT_TEMPLATE if has_chat_markers(tokenizer) else None


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that end an assistant reply: <|end|> and the end-of-sequence id."""
    ids = {tokenizer.token_to_id(END_TOKEN), tokenizer.eos_id}
    return frozenset(int(i) for i in ids if i is not None)


def add_chat_markers(tokenizer: Any) -> list[str]:
    """Add the missing chat markers to a Hugging Face tokenizer as special tokens; returns the
    names added (the caller resizes the model's embedding to the new vocabulary size).
    tr-tokenizer vocabularies always hold them."""
    missing = [t for t in CHAT_MARKERS if tokenizer.token_to_id(t) is None]
    if not missing:
        return []
    if tokenizer.eos_id is None:
        raise ChatTemplateError(
            "the tokenizer has no end-of-sequence token, which the chat template starts with; "
            "use a tokenizer that has one (tr-tokenizer, or a tokenizer.json with </s> or "
            "<|endoftext|>)"
        )
    add = getattr(tokenizer, "add_special_tokens", None)
    if add is None:
        raise ChatTemplateError(f"this tokenizer cannot add the chat markers {missing}")
    add(missing)
    return missing


@functools.cache
def _compiled(template: str) -> Any:
    """The Jinja template, compiled as transformers compiles chat templates."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template)


def check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise ChatTemplateError for a message without a known role or with non-text content."""
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"message {i} ({role}) needs its content as a string")


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
) -> RenderedChat:
    """Token ids of `messages` ({"role", "content"} dicts) in the tokenizer's chat template,
    with the assistant-turn mask; add_generation_prompt ends with the assistant marker."""
    template = chat_template(tokenizer)
    if template is None:
        raise ChatTemplateError(
            f"the tokenizer has no chat template and lacks the chat markers {CHAT_MARKERS}; "
            "fine-tune the model with `ismail finetune`, which adds them"
        )
    check_messages(messages)
    placeholders = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    text = _compiled(template).render(
        messages=placeholders,
        add_generation_prompt=add_generation_prompt,
        eos_token=tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else "",
        bos_token=tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else "",
    )
    return _encode_rendered(tokenizer, text, messages)


def _encode_rendered(
    tokenizer: Any, text: str, messages: Sequence[Mapping[str, Any]]
) -> RenderedChat:
    """Encode template text (special names as ids) and contents (as plain text) in order."""
    ends = end_of_turn_ids(tokenizer)
    ids: list[int] = []
    trainable: list[bool] = []
    after_assistant = False  # inside the template text that closes an assistant turn
    pos = 0
    for match in _SENTINEL_RE.finditer(text):
        after_assistant = _add_template_text(
            tokenizer, text[pos : match.start()], ids, trainable, after_assistant, ends
        )
        message = messages[int(match.group(1))]
        content = _encode_plain(tokenizer, message["content"])
        ids.extend(content)
        after_assistant = message["role"] == "assistant"
        trainable.extend([after_assistant] * len(content))
        pos = match.end()
    _add_template_text(tokenizer, text[pos:], ids, trainable, after_assistant, ends)
    return RenderedChat(ids, trainable)


def _add_template_text(
    tokenizer: Any,
    text: str,
    ids: list[int],
    trainable: list[bool],
    after_assistant: bool,
    ends: Iterable[int],
) -> bool:
    """Append the ids of template text; right after an assistant content they are trainable up
    to and including the first end-of-turn id. Returns whether that end is still to come."""
    for token_id in encode_with_specials(tokenizer, text):
        ids.append(token_id)
        trainable.append(after_assistant)
        if after_assistant and token_id in ends:
            after_assistant = False
    return after_assistant


def encode_with_specials(tokenizer: Any, text: str) -> list[int]:
    """Ids of text in which special-token names ("<|end|>") stand for their ids, as Hugging
    Face tokenizers read them (template text; never message content)."""
    if not text:
        return []
    if tokenizer.kind == "tr":
        return list(tokenizer.encode(text, allow_special=True).ids)
    return list(tokenizer.encode(text).ids)  # `tokenizers` splits added special tokens itself


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Ids of message content (tr-tokenizer never reads special names in it)."""
    return list(tokenizer.encode(text).ids) if text else []
