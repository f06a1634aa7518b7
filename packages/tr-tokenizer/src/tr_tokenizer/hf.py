"""A Hugging Face `transformers` tokenizer backed by tr_tokenizer (install the `hf` extra).

    from tr_tokenizer.hf import TrTokenizerHF
    hf_tok = TrTokenizerHF()                  # the shipped vocabulary
    hf_tok("Kitaplarımızdan birini okudunuz mu?")["input_ids"]
    hf_tok.save_pretrained("out"); TrTokenizerHF.from_pretrained("out")

Ids are identical to `tr_tokenizer`'s, and decoding is exact (no space clean-up). With
`prepend_bos=True`, encoding with special tokens (the default of `__call__`) puts `bos_token`
first, as a model trained on documents that each start after that token expects its prompts
(ismail's exports set `bos_token` to `<|eos|>`, the document separator).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from transformers import PreTrainedTokenizer, TextGenerationPipeline
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("tr_tokenizer.hf needs transformers: pip install 'tr-tokenizer[hf]'") from e

from tr_tokenizer.tokenizer import Tokenizer, load
from tr_tokenizer.vocab import BOS, CHAT_MARKERS, EOS, FILE_NAME, PAD

VOCAB_FILE = FILE_NAME


class TrTokenizerHF(PreTrainedTokenizer):
    """`transformers` wrapper: same ids, tokens and exact decoding as `tr_tokenizer.Tokenizer`."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        tokenizer: Tokenizer | None = None,
        prepend_bos: bool = False,
        **kwargs,
    ) -> None:
        if tokenizer is None:
            tokenizer = load(vocab_file or None)  # a directory or the json file itself
        self.tr = tokenizer
        self.prepend_bos = prepend_bos
        # Passed on so that it lands in init_kwargs, which save_pretrained writes out.
        # (Not named add_bos_token: transformers drops that key when saving.)
        kwargs["prepend_bos"] = prepend_bos
        kwargs.setdefault("bos_token", BOS)
        kwargs.setdefault("eos_token", EOS)
        kwargs.setdefault("pad_token", PAD)
        kwargs.setdefault("additional_special_tokens", list(CHAT_MARKERS))
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self.tr.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self.tr._ids)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.tr.encode(text).tokens

    def _convert_token_to_id(self, token: str) -> int:
        token_id = self.tr.token_to_id(token)
        if token_id is None:
            raise ValueError(f"unknown token {token!r}: not in the tr-tokenizer vocabulary")
        return token_id

    def _convert_id_to_token(self, index: int) -> str:
        return self.tr.id_to_token(index)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """The ids of a sequence (or pair) with `bos_token` before each when prepend_bos."""
        start = [self.bos_token_id] if self.prepend_bos else []
        ids = start + list(token_ids_0)
        return ids if token_ids_1 is None else ids + start + list(token_ids_1)

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where build_inputs_with_special_tokens put a special token, else 0."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
        start = [1] if self.prepend_bos else []
        mask = start + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + start + [0] * len(token_ids_1)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.tr.decode([self._convert_token_to_id(t) for t in tokens])

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,  # nothing to clean: decoding is exact
        **kwargs: Any,
    ) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self.tr.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def decode_continuation(
        self, token_ids: Sequence[int], context: Sequence[int], skip_special_tokens: bool = False
    ) -> str:
        """The text of `token_ids` as it reads after `context` (the ids before them, e.g. a
        prompt): a suffix's surface form depends on the word before it, so a continuation is
        decoded with its prefix (`milleti` + `+(y)A` reads `ye`; alone it reads `ya`)."""
        stream = self.tr.decode_stream(skip_special_tokens, context=[int(i) for i in context])
        return "".join(stream.step(int(i)) for i in token_ids) + stream.flush()

    def save_vocabulary(
        self, save_directory: str, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        name = f"{filename_prefix}-{VOCAB_FILE}" if filename_prefix else VOCAB_FILE
        os.makedirs(save_directory, exist_ok=True)
        return (str(self.tr.vocab.write(Path(save_directory) / name)),)


class TrTextGenerationPipeline(TextGenerationPipeline):
    """transformers' text-generation pipeline, with generated ids decoded after the prompt's.

    transformers decodes only the new ids (`sequence[prompt_length:]`), which reads a
    continuation that starts with a suffix without the word it attaches to. ismail's exports of
    tr-tokenizer models name this class in config.json's `custom_pipelines`, so
    `pipeline("text-generation", model=folder, trust_remote_code=True)` uses it.
    """

    def postprocess(self, model_outputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        tokenizer, prompt = self.tokenizer, model_outputs.get("input_ids")
        if not isinstance(tokenizer, TrTokenizerHF) or prompt is None:
            return super().postprocess(model_outputs, *args, **kwargs)
        # The parent's postprocess decodes through self.tokenizer; for this call it decodes
        # in the prompt's context (one prompt per call: the pipeline unbatches before this).
        # (_AfterPrompt has what the parent reads, decode and response_template; it is no
        # PythonBackend, the attribute's declared type: hence the ignore)
        self.tokenizer = _AfterPrompt(tokenizer, prompt[0].tolist())  # type: ignore[assignment]
        try:
            return super().postprocess(model_outputs, *args, **kwargs)
        finally:
            self.tokenizer = tokenizer


class _AfterPrompt:
    """What TrTextGenerationPipeline.postprocess sees as its tokenizer: `decode` of generated
    ids reads them after the prompt. (No chat response template: the parent's other path.)"""

    response_template = None

    def __init__(self, tokenizer: TrTokenizerHF, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._prompt_ids = prompt_ids

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        return self._tokenizer.decode_continuation(ids, self._prompt_ids, skip_special_tokens)
