"""Request and response schemas of the OpenAI-compatible API.

Field names, defaults and ranges follow OpenAI's API (and vLLM's extras such as top_k and
repetition_penalty). Types are strict: a string where a number belongs is a 400, not a silent
conversion. Unknown fields are ignored, as vLLM does, except the OpenAI features this server
does not implement, which are rejected by `reject_unsupported` instead of being ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from ismail_core.finetune.formats import json_type
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ismail_serve.errors import bad_request

# Largest values accepted for integer knobs: beyond these torch tensors would overflow.
_INT32_MAX = 2**31 - 1
_MAX_N = 16

# Most alternatives per position that `logprobs` / `top_logprobs` may ask for (OpenAI's limit).
MAX_LOGPROBS = 20

# Most stop strings a request may give: each one is matched against every generated token.
MAX_STOP = 16

# Most texts one POST /v1/classify request may send: they are classified in one call, so the
# limit bounds the work one request can ask for (OpenAI's embeddings take up to 2048 inputs).
MAX_CLASSIFY_INPUTS = 256

# OpenAI features that clients may send but this server does not implement.
UNSUPPORTED_FIELDS = (
    "suffix",
    "best_of",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
)


def _at_most_max_stop(stops: list[str]) -> list[str]:
    """A custom error, so the 400 says "at most 16 stop strings" rather than pydantic's words
    about list items (the schema still states the limit as maxItems)."""
    if len(stops) > MAX_STOP:
        raise PydanticCustomError(
            "too_many_stop_strings",
            "send at most {limit} stop strings, got {count}",
            {"limit": MAX_STOP, "count": len(stops)},
        )
    return stops


StopList = Annotated[
    list[str], AfterValidator(_at_most_max_stop), Field(json_schema_extra={"maxItems": MAX_STOP})
]


class StreamOptions(BaseModel):
    """stream_options: include_usage adds a final chunk with token counts."""

    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(description="The served model name (see /v1/models).")
    max_tokens: int | None = Field(
        None, ge=1, le=_INT32_MAX, description="Tokens to generate (default: up to the context)."
    )
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(0, ge=-1, le=_INT32_MAX, description="0 or -1 disables top-k.")
    repetition_penalty: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    stop: str | StopList | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int = Field(1, ge=1, le=_MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    skip_special_tokens: bool = Field(True, description="Leave special tokens out of the text.")
    ignore_eos: bool = Field(
        False, description="Keep generating past end-of-sequence tokens (for benchmarks)."
    )
    return_tokens_as_token_ids: bool = Field(
        False, description='Name tokens in logprobs "token_id:ID" instead of by their text.'
    )
    user: str | None = None

    def reject_unsupported(self) -> None:
        """400 for OpenAI features this server does not implement (instead of ignoring them)."""
        extra = self.model_extra or {}
        response_format = extra.get("response_format")
        if response_format not in (None, {"type": "text"}):  # "text" is OpenAI's default
            raise bad_request(
                f"response_format {json.dumps(response_format)} is not supported: ismail-serve "
                'answers with plain text only; send {"type": "text"} or leave it out.',
                param="response_format",
                code="unsupported_parameter",
            )
        for name in UNSUPPORTED_FIELDS:
            value = extra.get(name)
            if value not in (None, False, 0, 0.0, {}, []):
                raise bad_request(
                    f"'{name}' is not supported by ismail-serve; remove it from the request.",
                    param=name,
                    code="unsupported_parameter",
                )

    def stop_list(self) -> list[str]:
        """`stop` as a list of non-empty strings."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class CompletionRequest(SamplingRequest):
    """POST /v1/completions. `echo` with `logprobs` scores the prompt (lm-eval's
    loglikelihood); with `max_tokens: 0` it scores the prompt and generates nothing."""

    max_tokens: int | None = Field(
        None,
        ge=0,
        le=_INT32_MAX,
        description="Tokens to generate (default: up to the context); 0 only with echo.",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Log-probabilities of the chosen tokens and of this many most likely ones.",
    )
    echo: bool = Field(False, description="Return the prompt before the completion.")

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1),
        ]
    ) = Field(description="Text, a list of texts, token ids, or a list of token-id lists.")


class TextPart(BaseModel):
    """A text part of a chat message's content."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message; `developer` is treated as `system` (OpenAI's newer name).

    `content` may be null in OpenAI's schema (an assistant turn that only calls tools); this
    server has no tools, so `check_content` turns that into a 400 that says so.
    """

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None

    def check_content(self, index: int) -> None:
        """400 for a message without content."""
        if self.content is None:
            raise bad_request(
                f"messages[{index}] ({self.role}) has content null. ismail-serve has no tool "
                "calls, so every message needs its text as 'content' (a string, or a list of "
                "text parts); send an empty string for an empty turn.",
                param=f"messages.{index}.content",
            )

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(
        None, ge=1, le=_INT32_MAX, description="Newer OpenAI name for max_tokens."
    )
    logprobs: bool = Field(False, description="Return the log-probability of each token.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="Most likely alternatives per token (logprobs)."
    )


class TokenizeRequest(BaseModel):
    """POST /v1/tokenize: either `prompt` or `messages` (rendered with the chat template)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True


class RoutingRequest(BaseModel):
    """POST /v1/routing: either `prompt` (read as a completion prompt is) or `messages`."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True


class RootTokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's): `prompt` (special-token names read as such) or `messages`."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = Field(True, description="Put the document separator first.")
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    """POST /v1/detokenize."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=_INT32_MAX)]]


def _classify_input(value: Any) -> Any:
    """Check /v1/classify's `input` with errors that name the problem and the text: a string
    or a list of 1..MAX_CLASSIFY_INPUTS strings, none of them blank."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    else:
        raise PydanticCustomError(
            "input_type", "send a text or a list of texts, not {kind}", {"kind": json_type(value)}
        )
    if not texts:
        raise PydanticCustomError("no_inputs", "the list is empty; send at least one text", {})
    if len(texts) > MAX_CLASSIFY_INPUTS:
        raise PydanticCustomError(
            "too_many_inputs",
            "send at most {limit} texts in one request, got {count}; split them over several "
            "requests",
            {"limit": MAX_CLASSIFY_INPUTS, "count": len(texts)},
        )
    for i, text in enumerate(texts):
        where = "the text" if isinstance(value, str) else f"input[{i}]"
        if not isinstance(text, str):
            raise PydanticCustomError(
                "text_type",
                "{where} is {kind}, not a string",
                {"where": where, "kind": json_type(text)},
            )
        if not text.strip():
            raise PydanticCustomError(
                "empty_text", "{where} is empty; send some words in every text", {"where": where}
            )
    return value


class ClassifyRequest(BaseModel):
    """POST /v1/classify (a classifier checkpoint): the most probable label and every label's
    probability for each text. The shape follows OpenAI's moderations and embeddings."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = Field(None, description="The served model name (see /v1/models).")
    input: Annotated[
        str | Annotated[list[str], Field(json_schema_extra={"maxItems": MAX_CLASSIFY_INPUTS})],
        BeforeValidator(_classify_input),
    ] = Field(description="A text, or a list of texts classified together (one batch).")

    def texts(self) -> list[str]:
        """`input` as a list of texts."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---- responses (documented in the OpenAPI schema) ----


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """Log-probabilities of a completion's tokens (with echo, the prompt's come first)."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None for the prompt's first token
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ismail"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Tokenization(BaseModel):
    """Tokens of a text under one tokenizer."""

    count: int
    tokens: list[int]
    token_strs: list[str]
    offsets: list[tuple[int, int]] | None = Field(
        None, description="Character span of each token in the prompt (None for messages)."
    )
    kinds: list[str] | None = Field(
        None,
        description="Kind of each token: tr-tokenizer's root, suffix, bpe, byte, case, space, "
        "special; bpe or special for other tokenizers.",
    )


class ComparisonTokenization(Tokenization):
    """The same text under the comparison tokenizer (`--compare-tokenizer`)."""

    name: str


class TokenizeResponse(Tokenization):
    max_model_len: int
    comparison: ComparisonTokenization | None = Field(
        None, description="The prompt under the server's comparison tokenizer, if it has one."
    )


class LayerRouting(BaseModel):
    """One MoE layer's decision for every token of the text."""

    layer: int = Field(description="Index of the transformer block (dense blocks have none).")
    experts: list[list[int]] = Field(
        description="Per token, the routed experts' ids, highest selection score first."
    )
    weights: list[list[float]] = Field(
        description="Per token, the combine weights of those experts (route_scale included)."
    )
    load: list[int] = Field(description="Per expert, the tokens of this text routed to it.")
    kept: list[list[bool]] | None = Field(
        None,
        description="Per token and expert, False where the capacity factor dropped the "
        "assignment (None for a model without a capacity factor).",
    )


class RoutingResponse(BaseModel):
    """The experts each token of a text goes to, from one forward pass of the served model."""

    object: Literal["routing"] = "routing"
    model: str
    moe: bool = Field(description="False for a dense model: it has no experts to show.")
    message: str | None = Field(
        default=None, description="Why `layers` is empty, for a dense model."
    )
    n_layers: int
    n_experts: int = Field(description="Routed experts per MoE layer (0 for a dense model).")
    top_k: int = Field(description="Routed experts per token (0 for a dense model).")
    tokens: list[int]
    token_texts: list[str] = Field(
        description="What each token adds to the text, decoded in context; they join to it."
    )
    kinds: list[str]
    layers: list[LayerRouting]


class RootTokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info (vLLM's): what a client needs to tokenize like the server."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    eos_token_id: int | None
    bos_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None = Field(None, description="Jinja, as in tokenizer_config.json.")
    model_max_length: int
    vocab_size: int


class DetokenizeResponse(BaseModel):
    prompt: str


class Classification(BaseModel):
    """One text's result: the most probable label and each label's probability (softmax over
    the classifier's labels; they sum to 1)."""

    index: int
    label: str
    scores: dict[str, float]


class ClassifyUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the classifier read (texts cut to the context).")
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: ClassifyUsage


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "draining", "failed"]


def sse(data: dict[str, Any] | str) -> str:
    """One Server-Sent Events message."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"
