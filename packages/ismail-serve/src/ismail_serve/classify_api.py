"""POST /v1/classify: labels and scores from a classifier checkpoint.

    curl http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' \\
        -d '{"input": ["Efendiler! ...", "Muhterem arkadaşlar, ..."]}'

answers, in the style of OpenAI's moderations and embeddings,

    {"object": "list", "model": NAME,
     "data": [{"index": 0, "label": "1906-1922", "scores": {"1906-1922": 0.71, ...}}, ...],
     "usage": {"prompt_tokens": N, "total_tokens": N}}

The texts of a request are classified together by `TextClassifier.predict` on the server's
classifier worker (see classifier.py). A server holding a language model answers this route
with a 400, and a classifier server answers the generation routes with one (state.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from ismail_core.classify.data import ClassifyError

from ismail_serve.classifier import (
    Classified,
    ClassifierBusyError,
    ClassifierRunner,
    ClassifierStoppedError,
)
from ismail_serve.errors import bad_request, engine_failure, error_responses
from ismail_serve.openai_api import (
    busy_refusal,
    check_model,
    draining_refusal,
    get_state,
    require_api_key,
)
from ismail_serve.prompts import check_unicode
from ismail_serve.protocol import (
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyUsage,
)
from ismail_serve.state import ServerState

classify_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@classify_router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=error_responses(400, 401, 429, 500, 503),
)
async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
    """The most probable label and every label's probability for each input text (a
    classifier checkpoint only: `ismail finetune --task classify`)."""
    state = get_state(request)
    runner = state.ready_classifier()
    if body.model is not None:
        check_model(state, body.model)
    texts = body.texts()
    for text in texts:
        check_unicode(text, "input")
    result = await _classified(state, runner, texts)
    return ClassifyResponse(
        model=state.model_name,
        data=[
            Classification(index=i, label=p.label, scores=p.scores)
            for i, p in enumerate(result.predictions)
        ],
        usage=ClassifyUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )


async def _classified(state: ServerState, runner: ClassifierRunner, texts: list[str]) -> Classified:
    """The runner's answer for `texts`, its refusals and failures as OpenAI errors."""
    try:
        return await runner.classify(texts)
    except ClassifierBusyError as exc:
        raise busy_refusal(state, exc) from exc
    except ClassifierStoppedError as exc:
        raise draining_refusal(state, exc) from exc
    except ClassifyError as exc:  # the input checks above should leave nothing for these
        raise bad_request(str(exc), param="input") from exc
    except Exception as exc:  # a device failure (out of memory, ...) for this request only
        raise engine_failure("The classifier failed on this request", exc) from exc
