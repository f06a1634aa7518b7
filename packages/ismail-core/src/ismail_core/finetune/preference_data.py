"""Preference data for `ismail finetune --task dpo`: records read and checked, then encoded.

A record holds `prompt`, `chosen` and `rejected` (TRL's preference format):

- standard: `{"prompt": "...", "chosen": "...", "rejected": "..."}`
- conversational: `"prompt"` a list of `{"role", "content"}` messages (system, user, and
  earlier assistant turns, ending before the reply); `"chosen"` and `"rejected"` each a list
  holding one assistant message (or plain strings)

from a .json list, a JSONL file, a folder of them or `hf:NAME[:SPLIT]`, as for chat data.
Each side is encoded as the whole conversation in the chat template with labels only on the
reply (and its end-of-turn id), so its log-probability is that of the reply given the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ismail_core.chat import render_chat
from ismail_core.finetune.data import IGNORE, Example, encode_example
from ismail_core.finetune.formats import (
    CHAT_ROLES,
    FinetuneDataError,
    Message,
    Turn,
    json_type,
    read_records,
    read_turns,
    text_value,
)

KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferenceRecord:
    """A checked record: the conversation before the reply, the preferred and the
    dispreferred reply, and where it was read from (for messages only)."""

    prompt: tuple[Turn, ...]
    chosen: str
    rejected: str
    source: str = field(compare=False, default="")

    def prompt_messages(self) -> list[Message]:
        """The prompt as OpenAI-style message dicts."""
        return [{"role": role, "content": content} for role, content in self.prompt]


@dataclass
class PairExample:
    """The encoded chosen and rejected conversations of one record (labels on the reply)."""

    chosen: Example
    rejected: Example


def load_preference_records(spec: str, cache_dir: str | None = None) -> list[PreferenceRecord]:
    """Every record of `spec`, checked; raises FinetuneDataError on the first bad one."""
    records = [_record(record, source) for source, record in read_records(spec, cache_dir)]
    if not records:
        raise FinetuneDataError(f"{spec}: holds no records; give {describe_preference_format()}")
    return records


def describe_preference_format() -> str:
    """The accepted record shape, for error messages."""
    return (
        'records {"prompt": ..., "chosen": ..., "rejected": ...} with strings, or a prompt '
        "message list and one assistant message for each reply"
    )


def _record(record: Any, source: str) -> PreferenceRecord:
    if not isinstance(record, dict):
        raise FinetuneDataError(
            f"{source}: the record is {json_type(record)}; give {describe_preference_format()}"
        )
    missing = [key for key in KEYS if key not in record]
    if missing:
        raise FinetuneDataError(
            f"{source}: missing {', '.join(map(repr, missing))} (found keys {sorted(record)}); "
            f"give {describe_preference_format()}"
        )
    prompt = _prompt(record["prompt"], source)
    chosen = _reply(record["chosen"], "chosen", source)
    rejected = _reply(record["rejected"], "rejected", source)
    if chosen.strip() == rejected.strip():
        raise FinetuneDataError(
            f"{source}: chosen and rejected are the same reply, so there is no preference to "
            "learn; fix the record or drop it"
        )
    return PreferenceRecord(prompt, chosen, rejected, source)


def _prompt(value: Any, source: str) -> tuple[Turn, ...]:
    """The prompt as turns: a string is one user turn; a list is checked like chat data."""
    turns: list[Turn] = (
        [("user", text_value(value, '"prompt"', source))]
        if isinstance(value, str)
        else read_turns(value, "prompt", "role", "content", CHAT_ROLES, source)
    )
    if not any(content.strip() for _, content in turns):
        raise FinetuneDataError(f"{source}: the prompt is empty; give the text the replies answer")
    if turns[-1][0] == "assistant":
        raise FinetuneDataError(
            f"{source}: the prompt ends with an assistant turn; end it with the user's "
            "message that chosen and rejected reply to"
        )
    return tuple(turns)


def _reply(value: Any, key: str, source: str) -> str:
    """A reply: a string, or a list of exactly one assistant message."""
    if isinstance(value, list):
        turns = read_turns(value, key, "role", "content", CHAT_ROLES, source)
        if len(turns) != 1 or turns[0][0] != "assistant":
            raise FinetuneDataError(
                f'{source}: "{key}" must hold exactly one assistant message (the reply), found '
                f"roles {[role for role, _ in turns]}"
            )
        value = turns[0][1]
    text = text_value(value, f'"{key}"', source)
    if not text.strip():
        raise FinetuneDataError(f'{source}: "{key}" is empty; give the reply text')
    return text


def encode_pair(tokenizer: Any, record: PreferenceRecord) -> PairExample:
    """Both conversations in the chat template, with labels only on the reply."""
    messages = record.prompt_messages()
    prompt_ids = render_chat(tokenizer, messages, add_generation_prompt=True).ids

    def side(reply: str) -> Example:
        full = encode_example(tokenizer, [*messages, {"role": "assistant", "content": reply}])
        if full.ids[: len(prompt_ids)] != prompt_ids:
            raise FinetuneDataError(
                f"{record.source}: the chat template renders the prompt differently with a "
                "reply after it, so the reply's tokens cannot be told apart; use a template "
                "whose generation prompt is a prefix of the conversation"
            )
        n = len(prompt_ids)
        return Example(full.ids, [IGNORE] * n + full.labels[n:])

    return PairExample(side(record.chosen), side(record.rejected))


def fit_pair(pair: PairExample, max_len: int, too_long: str) -> PairExample | None:
    """The pair within `max_len` tokens per side: cut (too_long="truncate") or None ("drop").
    A pair that keeps no reply token on either side is None too."""
    sides: tuple[Example, ...] = (pair.chosen, pair.rejected)
    if any(len(ex.ids) > max_len for ex in sides):
        if too_long == "drop":
            return None
        sides = tuple(Example(ex.ids[:max_len], ex.labels[:max_len]) for ex in sides)
    if any(ex.trained == 0 for ex in sides):
        return None
    return PairExample(*sides)


def pair_rows(pairs: Sequence[PairExample]) -> list[Example]:
    """The examples of a batch of pairs: every chosen side first, then every rejected side."""
    return [p.chosen for p in pairs] + [p.rejected for p in pairs]
