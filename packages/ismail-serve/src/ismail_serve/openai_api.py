"""The /v1 routes: completions, chat completions (plain and streamed), models, tokenize; and
vLLM's root routes /tokenize, /detokenize, /tokenizer_info that lm-eval's remote tokenizer uses.

Each generation request becomes one `SequenceRequest` per prompt and choice, submitted to the
engine as a unit. Updates come back on an asyncio queue fed from the engine thread. A client
that goes away (streaming or not) gets its sequences aborted, which frees their KV slots at the
engine's next step.

Log-probabilities (`logprobs`, `echo`, chat's `logprobs`/`top_logprobs`) come from the engine
per token (see engine/logprobs.py) and are shaped here as OpenAI and vLLM return them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ismail_core.chat import chat_template, end_of_turn_ids
from ismail_core.sampling import SamplingParams
from ismail_core.tokenizer import TokenizerProtocol, TrTokenizer

from ismail_serve.engine import (
    EngineStoppedError,
    LLMEngine,
    QueueFullError,
    SequenceOutput,
    SequenceRequest,
)
from ismail_serve.engine.logprobs import TokenLogprob
from ismail_serve.engine.sequence import FINISH_ABORT, FINISH_LENGTH, FINISH_STOP, FINISH_TIMEOUT
from ismail_serve.errors import (
    APIError,
    ServeError,
    bad_request,
    busy_error,
    draining_error,
    error_body,
    error_responses,
)
from ismail_serve.prompts import (
    chat_prompt_ids,
    check_unicode,
    encode_prompt,
    encode_with_specials,
)
from ismail_serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    RootTokenizeRequest,
    RootTokenizeResponse,
    RoutingRequest,
    SamplingRequest,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    sse,
)
from ismail_serve.state import ServerState

SSE_DONE = "data: [DONE]\n\n"
# How a sequence ends normally; any other finish reason is answered with an error.
NORMAL_FINISH = (FINISH_STOP, FINISH_LENGTH)
# Seconds a client is told to wait after a 429.
RETRY_AFTER_S = 1

_bearer = HTTPBearer(auto_error=False, description="The server's API key, if it was given one.")


def busy_refusal(state: ServerState, reason: object) -> APIError:
    """The 429 for a request refused because the queue is full, counted in the metrics."""
    state.metrics.rejected.labels(reason="queue_full").inc()
    return busy_error(reason, RETRY_AFTER_S)


def draining_refusal(state: ServerState, reason: object) -> APIError:
    """The 503 for a request refused while the server drains, counted in the metrics."""
    state.metrics.rejected.labels(reason="draining").inc()
    return draining_error(reason)


def get_state(request: Request) -> ServerState:
    """The server's state, which the app holds."""
    state: ServerState = request.app.state.serve
    return state


def served_tokenizer(state: ServerState) -> TokenizerProtocol:
    """The loaded model's tokenizer. The routes ask for it after `state.ready_engine()`, which
    answers 503 until the model, and with it its tokenizer, is loaded."""
    assert state.tokenizer is not None, "ready_engine() passes only once the model is loaded"
    return state.tokenizer


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries `Authorization: Bearer <key>` (when a key is set)."""
    key = get_state(request).api_key
    if key is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise APIError(
            401,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>' "
            "(the key given to ismail-serve with --api-key or ISMAIL_API_KEY).",
            code="invalid_api_key",
        )


async def require_operator_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The API key check for /metrics and the API schema, under --protect-metrics only: as
    vLLM's --api-key, the key covers the API alone unless the operator asks for more."""
    if get_state(request).protect_metrics:
        await require_api_key(request, credentials)


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
root_router = APIRouter(dependencies=[Depends(require_api_key)])

_GEN_ERRORS = error_responses(400, 401, 408, 429, 500, 503)
_STREAM_DOC = {"text/event-stream": {"schema": {"type": "string"}}}


# ---- the bridge from the engine thread to the request's event loop ----


class OutputQueue:
    """An asyncio queue the engine thread can feed."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[SequenceOutput] = asyncio.Queue()

    def put(self, out: SequenceOutput) -> None:
        """Called on the engine thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, out)

    async def get(self) -> SequenceOutput:
        return await self._queue.get()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- building a generation ----


@dataclass
class Generation:
    """One submitted request: its sequences and where their updates arrive.

    `echo` holds each prompt's text when the response repeats the prompts (completions' echo).
    """

    request_id: str
    model: str
    prompts: list[list[int]]
    sequences: list[SequenceRequest]
    chat: bool = False
    echo: list[str] | None = None
    tokens_as_ids: bool = False  # name logprobs tokens "token_id:ID"
    queue: OutputQueue | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def start_text(self, index: int) -> str:
        """Text a choice starts with: its prompt under echo, else nothing."""
        if self.echo is None:
            return ""
        return self.echo[index // (len(self.sequences) // len(self.prompts))]


def check_model(state: ServerState, name: str) -> None:
    """A 400 unless `name` is the served model's name."""
    if name != state.model_name:
        raise bad_request(
            f"The model '{name}' does not exist. This server serves '{state.model_name}' "
            "(see GET /v1/models).",
            param="model",
            code="model_not_found",
        )


def _check_token_ids(state: ServerState, ids: list[int], param: str) -> None:
    vocab = served_tokenizer(state).vocab_size
    bad = next((i for i in ids if i >= vocab), None)
    if bad is not None:
        raise bad_request(
            f"Token id {bad} is outside the vocabulary (ids 0..{vocab - 1}).", param=param
        )


def check_prompt_chars(state: ServerState, lengths: list[int], chat: bool) -> None:
    """400 for a text too long to fit the context however it tokenizes, before tokenizing it
    (see prompts.longest_token_chars): a 10 MB word would otherwise keep a CPU busy for many
    seconds only to be refused."""
    limit = state.prompt_char_limit
    longest = max(lengths, default=0)
    if limit is not None and longest > limit:
        raise bad_request(
            f"This model's maximum context length is {state.max_model_len} tokens. However, "
            f"your request has {longest} characters of input, and {state.max_model_len} tokens "
            f"of this tokenizer hold at most {limit}. Please reduce the length of the input "
            "messages.",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )


def max_new_tokens(state: ServerState, prompt_len: int, requested: int | None, chat: bool) -> int:
    """Tokens to generate; 400 worded like vLLM's when prompt + output exceed the context.
    `requested` 0 scores the prompt only, which may then fill the whole context."""
    limit = state.max_model_len
    if prompt_len > limit or (prompt_len == limit and requested != 0):
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, your request "
            f"has {prompt_len} input tokens. Please reduce the length of the input messages.",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return limit - prompt_len
    if prompt_len + requested > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the messages, {requested} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def _logprob_counts(body: SamplingRequest) -> tuple[int | None, int | None]:
    """(alternatives per generated token, per prompt token); None where none are asked for."""
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request(
                "'top_logprobs' needs 'logprobs': true; set it, or leave 'top_logprobs' out.",
                param="top_logprobs",
            )
        return (body.top_logprobs or 0) if body.logprobs else None, None
    assert isinstance(body, CompletionRequest)
    if body.max_tokens == 0 and not body.echo:
        raise bad_request(
            "'max_tokens': 0 generates nothing; it is only useful with 'echo': true (to score "
            "the prompt). Ask for at least one token, or set echo.",
            param="max_tokens",
        )
    return body.logprobs, body.logprobs if body.echo else None


def _stop_ids(tokenizer: TokenizerProtocol, chat: bool) -> frozenset[int]:
    """Ids that end generation: a chat reply ends with its turn (the chat template's
    end-of-turn ids), a completion with the document (the end-of-sequence id)."""
    if chat:
        return end_of_turn_ids(tokenizer)
    return frozenset() if tokenizer.eos_id is None else frozenset({int(tokenizer.eos_id)})


def _prepare(
    state: ServerState,
    body: SamplingRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    chat: bool,
    prefix: str,
) -> Generation:
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    logprobs, prompt_logprobs = _logprob_counts(body)
    stops = body.stop_list()
    stop_ids = frozenset() if body.ignore_eos else _stop_ids(served_tokenizer(state), chat)
    sequences = []
    for p, prompt in enumerate(prompts):
        budget = max_new_tokens(state, len(prompt), max_tokens, chat)
        for j in range(body.n):
            params = SamplingParams(
                temperature=body.temperature,
                top_k=max(body.top_k, 0),  # -1 is vLLM's 'off'; sample_next clamps k
                top_p=body.top_p,
                repetition_penalty=body.repetition_penalty,
                seed=None if body.seed is None else body.seed + j,
            )
            sequences.append(
                SequenceRequest(
                    request_id=request_id,
                    index=p * body.n + j,
                    prompt_ids=prompt,
                    params=params,
                    max_tokens=budget,
                    stop=stops,
                    stop_token_ids=stop_ids,
                    skip_special_tokens=body.skip_special_tokens,
                    logprobs=logprobs,
                    prompt_logprobs=prompt_logprobs,
                )
            )
    gen = Generation(
        request_id,
        body.model,
        prompts,
        sequences,
        chat=chat,
        tokens_as_ids=body.return_tokens_as_token_ids,
    )
    if getattr(body, "echo", False):
        skip = body.skip_special_tokens
        tokenizer = served_tokenizer(state)
        gen.echo = [tokenizer.decode(p, skip_special_tokens=skip) for p in prompts]
    return gen


def _completion_prompts(
    state: ServerState, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[list[int]]:
    """Token ids of each prompt; called off the event loop (tokenizing is CPU work)."""
    tokenizer = served_tokenizer(state)
    if isinstance(prompt, str):
        prompts = [encode_prompt(tokenizer, prompt)]
    elif isinstance(prompt[0], str):
        prompts = [encode_prompt(tokenizer, p) for p in prompt]
    elif isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    for ids in prompts:
        if not ids:
            raise bad_request("The prompt encodes to no tokens; send a non-empty prompt.", "prompt")
        _check_token_ids(state, ids, "prompt")
    return prompts


def _submit(state: ServerState, engine: LLMEngine, gen: Generation) -> None:
    gen.queue = OutputQueue()
    try:
        engine.submit(gen.sequences, gen.queue.put)
    except QueueFullError as exc:
        raise busy_refusal(state, exc) from exc
    except EngineStoppedError as exc:
        raise draining_refusal(state, exc) from exc


def _failure(out: SequenceOutput) -> APIError:
    """The error for a sequence that ended other than by stop or length."""
    if out.finish_reason == FINISH_TIMEOUT:
        return APIError(
            408,
            "The request ran past the server's per-request timeout "
            "(--request-timeout); ask for fewer tokens.",
            type="timeout_error",
            code="timeout",
        )
    if out.finish_reason == FINISH_ABORT:
        return APIError(
            503,
            "The server is shutting down and ended this request.",
            type="service_unavailable",
            code="draining",
        )
    return APIError(
        500,
        f"The engine failed on this request: {out.error}",
        type="server_error",
        code="engine_error",
    )


# ---- running a generation ----


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_generated: int = 0
    finish_reason: str | None = None


def _name_by_id(entries: list[TokenLogprob]) -> list[TokenLogprob]:
    """Entries whose token texts are "token_id:ID" (vLLM's return_tokens_as_token_ids)."""
    name = "token_id:{}".format
    return [
        TokenLogprob(e.token_id, e.logprob, e.top, name(e.token_id), [name(i) for i, _ in e.top])
        for e in entries
    ]


def _token_entries(out: SequenceOutput) -> list[TokenLogprob]:
    """The log-probability entries an update carries: the prompt's first, if any."""
    return [*(out.prompt_logprobs or []), *(out.logprobs or [])]


def _top_dict(entry: TokenLogprob) -> dict[str, float] | None:
    """OpenAI's completions top_logprobs entry: text -> log-probability, the chosen token
    included (so it may hold one more than asked for); equal texts keep the higher number."""
    if entry.logprob is None:
        return None
    top: dict[str, float] = {entry.text: entry.logprob}
    for text, (_, logprob) in zip(entry.top_texts or [], entry.top):
        top[text] = max(top.get(text, logprob), logprob)
    return top


def _completion_logprobs(
    entries: list[TokenLogprob], offset: int, by_id: bool = False
) -> dict[str, Any]:
    """vLLM's completions logprobs object; text_offset counts from `offset` in the choice text.
    `by_id` names tokens by id (offsets still count their text)."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    if by_id:
        entries = _name_by_id(entries)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e) for e in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(entries: list[TokenLogprob], by_id: bool = False) -> dict[str, Any]:
    """OpenAI's chat logprobs object (`by_id`: tokens named "token_id:ID")."""
    if by_id:
        entries = _name_by_id(entries)

    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {
                **item(e.text, e.logprob or 0.0),
                "top_logprobs": [item(t, lp) for t, (_, lp) in zip(e.top_texts or [], e.top)],
            }
            for e in entries
        ]
    }


async def _collect(engine: LLMEngine, gen: Generation, request: Request) -> dict[int, _Choice]:
    """Wait for every sequence to finish; abort them if the client disconnects first."""
    choices = {s.index: _Choice([gen.start_text(s.index)]) for s in gen.sequences}
    queue = gen.queue
    assert queue is not None, "submitted (_submit) before it is collected"

    async def consume() -> SequenceOutput | None:
        remaining = len(choices)
        while remaining:
            out = await queue.get()
            choice = choices[out.index]
            choice.text.append(out.text)
            choice.logprobs += _token_entries(out)
            choice.num_generated = out.num_generated
            if out.finish_reason is not None:
                if out.finish_reason not in NORMAL_FINISH:
                    return out
                choice.finish_reason = out.finish_reason
                remaining -= 1
        return None

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not consumer.done():
            consumer.cancel()
            engine.abort(gen.request_id)
    if consumer.cancelled():
        raise _ClientGone
    failed = consumer.result()
    if failed is not None:
        engine.abort(gen.request_id)
        raise _failure(failed)
    return choices


class _ClientGone(ServeError):
    """The client disconnected before its response was ready."""


def _usage(gen: Generation, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": gen.prompt_tokens + completion_tokens,
    }


class _Chunks:
    """The Server-Sent Events chunks of one streamed generation: OpenAI's chunk objects, with
    each choice's text offset counted for completions' logprobs."""

    def __init__(self, gen: Generation, chat: bool) -> None:
        self.gen = gen
        self.chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.head = {
            "id": gen.request_id,
            "object": obj,
            "created": gen.created,
            "model": gen.model,
        }
        self.wants_logprobs = {s.index: s.logprobs is not None for s in gen.sequences}
        self.offsets = {s.index: 0 for s in gen.sequences}  # text sent so far per choice

    def chunk(
        self,
        index: int,
        text: str,
        finish: str | None,
        first: bool = False,
        entries: list[TokenLogprob] | None = None,
    ) -> str:
        """One choice's update (chat's `first` chunk carries the assistant role)."""
        logprobs = None
        choice: dict[str, Any]
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            if finish is not None and not text:
                delta = {}
            if self.wants_logprobs[index] and not first:
                logprobs = _chat_logprobs(entries or [], self.gen.tokens_as_ids)
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            if entries is not None and self.wants_logprobs[index]:
                offset = self.offsets[index]
                logprobs = _completion_logprobs(entries, offset, self.gen.tokens_as_ids)
            self.offsets[index] += len(text)
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**self.head, "choices": [choice]})

    def usage(self, completion_tokens: int) -> str:
        """The final chunk of `stream_options.include_usage`."""
        return sse({**self.head, "choices": [], "usage": _usage(self.gen, completion_tokens)})


async def _stream(
    engine: LLMEngine, gen: Generation, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """Server-Sent Events for a generation; aborts it if the client goes away mid-stream."""
    assert gen.queue is not None
    chunks = _Chunks(gen, chat)
    generated = {s.index: 0 for s in gen.sequences}
    started = set()  # choices whose echoed prompt was sent
    remaining = len(generated)
    try:
        if chat:
            for index in generated:
                yield chunks.chunk(index, "", None, first=True)
        while remaining:
            out = await gen.queue.get()
            generated[out.index] = out.num_generated
            if out.finish_reason is not None and out.finish_reason not in NORMAL_FINISH:
                err = _failure(out)
                yield sse(error_body(err.message, err.type, err.param, err.code))
                yield SSE_DONE
                return
            text, entries = out.text, _token_entries(out)
            if out.index not in started:
                started.add(out.index)
                text = gen.start_text(out.index) + text
            if text or entries or out.finish_reason is not None:
                yield chunks.chunk(out.index, text, out.finish_reason, entries=entries)
            if out.finish_reason is not None:
                remaining -= 1
        if include_usage:
            yield chunks.usage(sum(generated.values()))
        yield SSE_DONE
    finally:
        if remaining:
            engine.abort(gen.request_id)


def _streaming_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _run(
    state: ServerState,
    body: SamplingRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    chat: bool,
    request: Request,
) -> Response:
    engine = state.ready_engine()
    gen = _prepare(state, body, prompts, max_tokens, chat, "chatcmpl" if chat else "cmpl")
    _submit(state, engine, gen)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _streaming_response(_stream(engine, gen, chat, include_usage))
    try:
        choices = await _collect(engine, gen, request)
    except _ClientGone:
        return Response(status_code=499)  # nobody is listening any more
    usage = _usage(gen, sum(c.num_generated for c in choices.values()))

    def output(c: _Choice) -> dict[str, Any]:
        text = "".join(c.text)
        wanted = gen.sequences[0].logprobs is not None
        if chat:
            logprobs = _chat_logprobs(c.logprobs, gen.tokens_as_ids) if wanted else None
            return {"message": {"role": "assistant", "content": text}, "logprobs": logprobs}
        logprobs = _completion_logprobs(c.logprobs, 0, gen.tokens_as_ids) if wanted else None
        return {"text": text, "logprobs": logprobs}

    return JSONResponse(
        {
            "id": gen.request_id,
            "created": gen.created,
            "model": gen.model,
            "usage": usage,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [
                {"index": i, **output(c), "finish_reason": c.finish_reason}
                for i, c in sorted(choices.items())
            ],
        }
    )


# ---- routes ----


def _generation_state(request: Request, body: SamplingRequest) -> ServerState:
    """The server's state for a completion or chat request, checked in the order clients see
    the errors: the engine ready (503), options ismail does not support (400), the model."""
    state = get_state(request)
    state.ready_engine()
    body.reject_unsupported()
    check_model(state, body.model)
    return state


@router.post(
    "/completions",
    response_model=None,
    responses={200: {"model": CompletionResponse, "content": _STREAM_DOC}, **_GEN_ERRORS},
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """OpenAI's text completion; `stream: true` answers with Server-Sent Events."""
    state = _generation_state(request, body)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    check_prompt_chars(state, [len(t) for t in texts if isinstance(t, str)], chat=False)
    # Off the event loop, so streams and /health keep answering while a long prompt encodes.
    prompts = await asyncio.to_thread(_completion_prompts, state, body.prompt)
    return await _run(state, body, prompts, body.max_tokens, chat=False, request=request)


@router.post(
    "/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletionResponse, "content": _STREAM_DOC}, **_GEN_ERRORS},
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI's chat completion in the checkpoint's chat template (see prompts.py)."""
    state = _generation_state(request, body)
    check_prompt_chars(state, [sum(len(m.text()) for m in body.messages)], chat=True)
    prompt = await asyncio.to_thread(chat_prompt_ids, served_tokenizer(state), body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await _run(state, body, [prompt], max_tokens, chat=True, request=request)


@router.get("/models", response_model=ModelList, responses=error_responses(401))
async def list_models(request: Request) -> ModelList:
    """The one model this server serves."""
    state = get_state(request)
    card = ModelCard(id=state.model_name, created=state.created, max_model_len=state.max_model_len)
    return ModelList(data=[card])


def token_kinds(tok: TokenizerProtocol, ids: list[int]) -> list[str]:
    """Kind of each token: tr-tokenizer's own (root, suffix, case, ...), else "special" or
    "bpe"."""
    if isinstance(tok, TrTokenizer):
        return [tok.token_kind(i) for i in ids]
    specials = set(tok.special_tokens.values())
    return ["special" if i in specials else "bpe" for i in ids]


def _tokenization(tok: TokenizerProtocol, text: str) -> dict[str, Any]:
    check_unicode(text, "prompt")
    enc = tok.encode(text)
    ids = list(enc.ids)
    return {
        "count": len(ids),
        "tokens": ids,
        "token_strs": [tok.id_to_token(i) or "" for i in ids],
        "offsets": [tuple(o) for o in enc.offsets],
        "kinds": token_kinds(tok, ids),
    }


def prompt_or_messages(
    body: TokenizeRequest | RootTokenizeRequest | RoutingRequest,
) -> str | list[ChatMessage]:
    """The text (`prompt`) or the chat (`messages`) of a request that takes either; a 400
    unless it has exactly one."""
    if body.messages is None and body.prompt is not None:
        return body.prompt
    if body.prompt is None and body.messages is not None:
        return body.messages
    raise bad_request("Send exactly one of 'prompt' (text) or 'messages' (a chat).", "prompt")


def _tokenizer_state(
    request: Request, body: TokenizeRequest | RootTokenizeRequest
) -> tuple[ServerState, str | list[ChatMessage]]:
    """The server state for a tokenize request, after checking its model, and its input."""
    state = get_state(request)
    state.ready_engine()
    if body.model is not None:
        check_model(state, body.model)
    return state, prompt_or_messages(body)


@router.post("/tokenize", response_model=TokenizeResponse, responses=error_responses(400, 401, 503))
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Token ids, strings, character offsets and kinds of a prompt (or a rendered chat), and
    the prompt under the comparison tokenizer when the server has one."""
    state, source = _tokenizer_state(request, body)
    # CPU work: off the event loop
    result = await asyncio.to_thread(_tokenize_v1, state, source, body.add_generation_prompt)
    return TokenizeResponse(max_model_len=state.max_model_len, **result)


def _tokenize_v1(
    state: ServerState, source: str | list[ChatMessage], add_generation_prompt: bool
) -> dict[str, Any]:
    """/v1/tokenize's fields for a prompt (with the comparison tokenizer's) or a chat."""
    tok = served_tokenizer(state)
    if isinstance(source, str):
        result = _tokenization(tok, source)
        if state.compare_tokenizer is not None:
            result["comparison"] = {
                "name": state.compare_name,
                **_tokenization(state.compare_tokenizer, source),
            }
        return result
    ids = chat_prompt_ids(tok, source, add_generation_prompt)
    return {"count": len(ids), "tokens": ids, "token_strs": [tok.id_to_token(i) or "" for i in ids]}


@router.post(
    "/detokenize", response_model=DetokenizeResponse, responses=error_responses(400, 401, 503)
)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """Text of a list of token ids."""
    state = get_state(request)
    state.ready_engine()
    if body.model is not None:
        check_model(state, body.model)
    _check_token_ids(state, body.tokens, "tokens")
    text = await asyncio.to_thread(
        served_tokenizer(state).decode, body.tokens
    )  # off the event loop
    return DetokenizeResponse(prompt=text)


# ---- vLLM's root tokenizer routes (lm-eval's `tokenizer_backend=remote`) ----


@root_router.get(
    "/tokenizer_info", response_model=TokenizerInfo, responses=error_responses(401, 503)
)
async def tokenizer_info(request: Request) -> TokenizerInfo:
    """The served tokenizer's special tokens, chat template and limits (vLLM's route)."""
    state = get_state(request)
    state.ready_engine()
    tok = served_tokenizer(state)

    def name(idx: int | None) -> str | None:
        return None if idx is None else tok.id_to_token(idx)

    return TokenizerInfo(
        tokenizer_class="tr-tokenizer" if tok.kind == "tr" else "tokenizers",
        eos_token=name(tok.eos_id),
        bos_token=name(tok.bos_id),
        pad_token=name(tok.pad_id),
        eos_token_id=tok.eos_id,
        bos_token_id=tok.bos_id,
        pad_token_id=tok.pad_id,
        chat_template=chat_template(tok),
        model_max_length=state.max_model_len,
        vocab_size=tok.vocab_size,
    )


@root_router.post(
    "/tokenize", response_model=RootTokenizeResponse, responses=error_responses(400, 401, 503)
)
async def tokenize_root(body: RootTokenizeRequest, request: Request) -> RootTokenizeResponse:
    """vLLM's /tokenize: special-token names in the prompt become their ids (as in Hugging
    Face tokenizers), and `add_special_tokens` puts the document separator first, as a text
    prompt to /v1/completions gets it."""
    state, source = _tokenizer_state(request, body)
    tok = served_tokenizer(state)
    ids, strs = await asyncio.to_thread(_tokenize_root, tok, source, body)  # off the loop
    return RootTokenizeResponse(
        count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs
    )


def _tokenize_root(
    tok: TokenizerProtocol, source: str | list[ChatMessage], body: RootTokenizeRequest
) -> tuple[list[int], list[str] | None]:
    """vLLM's /tokenize ids of the request's `source` (the chat template, or the prompt with
    special-token names read) and, if asked for, their token strings."""
    if not isinstance(source, str):
        ids = chat_prompt_ids(tok, source, body.add_generation_prompt)
    else:
        ids = encode_with_specials(tok, source)
        if body.add_special_tokens and tok.document_start_id is not None:
            ids = [tok.document_start_id, *ids]
    strs = [tok.id_to_token(i) or "" for i in ids] if body.return_token_strs else None
    return ids, strs


@root_router.post(
    "/detokenize", response_model=DetokenizeResponse, responses=error_responses(400, 401, 503)
)
async def detokenize_root(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """vLLM's /detokenize: the text of token ids (special tokens written out)."""
    return await detokenize(body, request)
