"""POST /v1/routing: which experts each token of a text goes to (the /router page's data).

    curl http://127.0.0.1:8000/v1/routing -H 'Content-Type: application/json' \\
        -d '{"prompt": "Kitaplarımızdan birini okudunuz mu?"}'

answers

    {"object": "routing", "model": NAME, "moe": true, "n_layers": 4, "n_experts": 8,
     "top_k": 2, "tokens": [0, 812, ...], "token_texts": ["<|endoftext|>", "Kitap", ...],
     "kinds": ["special", "root", ...],
     "layers": [{"layer": 1, "experts": [[3, 5], ...], "weights": [[0.61, 0.39], ...],
                 "load": [4, 0, ...], "kept": null}, ...]}

The text is read as the generation routes read it: `prompt` starts with the document separator
(as a /v1/completions prompt does), `messages` are rendered with the chat template. Each token's
text is decoded in context (a suffix's surface form depends on the text before it), so the
texts join to the decoded text. A dense model answers 200 with `"moe": false`, a `message`
saying it has no experts, and the tokens; a classifier checkpoint answers 400.

The forward pass (Transformer.forward with return_routing=True, no KV cache) runs on the engine
thread between two steps (LLMEngine.run_between_steps): it never runs beside a batched step,
and running sequences wait for it once, as for a prompt's prefill of the same length.
"""

from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter, Depends, Request
from ismail_core.model.compiled import FastDecoder
from ismail_core.model.transformer import Transformer

from ismail_serve.engine import EngineStoppedError, LLMEngine
from ismail_serve.engine.logprobs import token_texts
from ismail_serve.errors import (
    bad_request,
    draining_error,
    engine_failure,
    error_responses,
)
from ismail_serve.openai_api import (
    check_model,
    check_prompt_chars,
    get_state,
    max_new_tokens,
    prompt_or_messages,
    require_api_key,
    served_tokenizer,
    token_kinds,
)
from ismail_serve.prompts import chat_prompt_ids, encode_prompt
from ismail_serve.protocol import ChatMessage, LayerRouting, RoutingRequest, RoutingResponse
from ismail_serve.state import ServerState

routing_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@routing_router.post(
    "/routing", response_model=RoutingResponse, responses=error_responses(400, 401, 500, 503)
)
async def routing(body: RoutingRequest, request: Request) -> RoutingResponse:
    """The routed experts and combine weights of every token of a text in every MoE layer,
    and each layer's per-expert token counts; `moe: false` for a dense model."""
    state = get_state(request)
    engine = state.ready_engine()
    if body.model is not None:
        check_model(state, body.model)
    source = prompt_or_messages(body)
    chat = not isinstance(source, str)
    # the context-length 400 before tokenizing a text too long to fit however it tokenizes
    if isinstance(source, str):
        check_prompt_chars(state, [len(source)], chat=False)
    else:
        check_prompt_chars(state, [sum(len(m.text()) for m in source)], chat=True)
    # CPU work: off the event loop
    ids = await asyncio.to_thread(_prompt_ids, state, source, body.add_generation_prompt)
    if not ids:
        raise bad_request("The prompt is empty: send some text to route.", "prompt")
    max_new_tokens(state, len(ids), 0, chat)  # the 400 for a text longer than the context
    cfg = engine.runner.model.cfg
    # no MoE layer at all (n_routed_experts 0, or every layer among the first n_dense_layers)
    moe = any(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    tokenizer = served_tokenizer(state)
    texts = await asyncio.to_thread(token_texts, tokenizer, ids)
    response = RoutingResponse(
        model=state.model_name,
        moe=moe,
        n_layers=cfg.n_layers,
        n_experts=cfg.n_routed_experts if moe else 0,
        top_k=cfg.n_activated_experts if moe else 0,
        tokens=ids,
        token_texts=texts,
        kinds=token_kinds(tokenizer, ids),
        layers=[],
    )
    if not response.moe:
        response.message = (
            f"'{state.model_name}' is a dense model: every token goes through the same "
            "feed-forward layers, so there is no routing to show."
        )
        return response
    response.layers = await _routed(engine, ids)
    return response


def _prompt_ids(
    state: ServerState, source: str | list[ChatMessage], add_generation_prompt: bool
) -> list[int]:
    """Token ids of the request's text or chat, as the generation routes would read it."""
    tokenizer = served_tokenizer(state)
    if isinstance(source, str):
        return encode_prompt(tokenizer, source)
    return chat_prompt_ids(tokenizer, source, add_generation_prompt)


async def _routed(engine: LLMEngine, ids: list[int]) -> list[LayerRouting]:
    """Each MoE layer's routing of `ids`, computed on the engine thread between two steps."""
    try:
        future = engine.run_between_steps(lambda: route_ids(engine.runner.model, ids))
        return await asyncio.wrap_future(future)
    except EngineStoppedError as exc:
        raise draining_error(exc) from exc
    except Exception as exc:  # a device failure (out of memory, ...) for this request only
        raise engine_failure("The routing pass failed", exc) from exc


@torch.inference_mode()
def route_ids(model: Transformer | FastDecoder, ids: list[int]) -> list[LayerRouting]:
    """One uncached forward pass of `ids` that keeps the routing (the LM head runs at the last
    position only); the per-layer decisions and per-expert token counts as plain lists."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(x, logits_at=torch.tensor([len(ids) - 1], device=device), return_routing=True)
    layers = []
    for r, load in zip(out.routing, out.expert_load):
        weights = [[round(w, 5) for w in row] for row in r.weights[0].float().tolist()]
        kept = None if r.kept is None else r.kept[0].tolist()
        experts = r.expert_ids[0].tolist()
        layers.append(
            LayerRouting(
                layer=r.layer, experts=experts, weights=weights, load=load.tolist(), kept=kept
            )
        )
    return layers
