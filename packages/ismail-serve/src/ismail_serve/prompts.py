"""Prompts to token ids: plain text for /v1/completions, the chat template for chat.

A completion prompt starts with the end-of-sequence id when the tokenizer has one: training
data separates documents with it, so the model reads what follows as the start of a document
(the same convention as `ismail generate`).

Chat messages are rendered by `ismail_core.chat`, the one chat template shared with
`ismail finetune`, `ismail generate --chat` and the Hugging Face export: the template stored
with the checkpoint's tokenizer, else the default one when the tokenizer has the chat markers.
With tr-tokenizer a user who types "<|system|>" into a message cannot forge a role (a Hugging
Face tokenizer's encode still splits its added special tokens out of text). Chat replies stop
at `ismail_core.chat.end_of_turn_ids`, and /tokenizer_info hands clients the same template.
"""

from __future__ import annotations

from collections.abc import Sequence

from ismail_core import chat
from ismail_core.generate import prompt_ids
from ismail_core.tokenizer import TokenizerProtocol

from ismail_serve.errors import bad_request
from ismail_serve.protocol import ChatMessage


def check_unicode(text: str, param: str) -> None:
    """400 for text that is not valid Unicode (JSON can carry lone UTF-16 surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            f"'{param}' holds a lone UTF-16 surrogate at position {exc.start}; send valid text.",
            param=param,
        ) from exc


def encode_with_specials(tokenizer: TokenizerProtocol, text: str) -> list[int]:
    """Token ids of text in which special-token names ("<|eos|>") stand for their ids, as
    Hugging Face tokenizers read them (vLLM's /tokenize; never used for chat messages)."""
    check_unicode(text, "prompt")
    return chat.encode_with_specials(tokenizer, text)


def encode_prompt(tokenizer: TokenizerProtocol, text: str) -> list[int]:
    """Token ids of a completion prompt: the document separator, then the text."""
    check_unicode(text, "prompt")
    return prompt_ids(tokenizer, text)


def chat_prompt_ids(
    tokenizer: TokenizerProtocol,
    messages: Sequence[ChatMessage],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a conversation in the checkpoint's chat template (`ismail_core.chat`);
    400 for a message without text and for a tokenizer that has no chat template."""
    plain = []
    for i, message in enumerate(messages):
        message.check_content(i)
        text = message.text()
        check_unicode(text, "messages")
        plain.append({"role": message.role, "content": text})
    try:
        return chat.render_chat(tokenizer, plain, add_generation_prompt).ids
    except chat.ChatTemplateError as exc:
        raise bad_request(
            f"This model cannot render chat messages: {exc}. Or send a plain prompt to "
            "/v1/completions instead.",
            code="chat_template_unavailable",
        ) from exc


def longest_token_chars(tokenizer: TokenizerProtocol) -> int | None:
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
    if tokenizer.kind != "tr":
        return None
    return max(len(tokenizer.id_to_token(i) or "") for i in range(tokenizer.vocab_size))
