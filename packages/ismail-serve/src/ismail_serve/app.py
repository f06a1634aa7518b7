"""The FastAPI application: /v1 routes (generation in openai_api.py, /v1/classify in
classify_api.py, /v1/routing in routing_api.py), /health, /metrics, error handling, OpenAPI
schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ismail_serve import __version__
from ismail_serve.classify_api import classify_router
from ismail_serve.errors import error_responses, install_error_handlers
from ismail_serve.limits import BodySizeLimit
from ismail_serve.metrics import CONTENT_TYPE
from ismail_serve.openai_api import get_state, require_operator_key, root_router, router
from ismail_serve.protocol import HealthResponse
from ismail_serve.routing_api import routing_router
from ismail_serve.state import STATUS_OK, ServerState
from ismail_serve.web import find_apps_dir, mount_apps


def create_app(
    state: ServerState,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The service for `state`; `on_startup` runs when the server starts (it begins loading
    the model), `on_shutdown` when it stops."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(
        title="ismail-serve",
        version=__version__,
        description="OpenAI-compatible inference for ismail checkpoints.",
        lifespan=lifespan,
        # Added below with the API key check that --protect-metrics turns on.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.add_middleware(BodySizeLimit, get_limit=lambda: state.max_request_bytes)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(classify_router)
    app.include_router(routing_router)
    app.include_router(root_router)

    operator = [Depends(require_operator_key)]
    _add_status_routes(app, operator)
    _add_schema_routes(app, operator)

    # Web pages from apps/web (issue 8): chat at /, playground at /tokenizer; not in the schema.
    apps_dir = find_apps_dir()
    if apps_dir is not None:
        mount_apps(app, apps_dir)
    app.state.pages_mounted = apps_dir is not None
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
    return app


def _add_status_routes(app: FastAPI, operator: list[Any]) -> None:
    """/health (always open) and /metrics (behind `operator`: the key under --protect-metrics)."""

    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "Loading or shutting down"}},
    )
    async def health(request: Request) -> JSONResponse:
        """200 when serving; 503 while loading, draining, or after a failed load."""
        status = get_state(request).status
        return JSONResponse({"status": status}, status_code=200 if status == STATUS_OK else 503)

    @app.get(
        "/metrics",
        dependencies=operator,
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)


def _add_schema_routes(app: FastAPI, dependencies: list[Any]) -> None:
    """/openapi.json, /docs and /redoc as FastAPI serves them, with `dependencies`."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def _openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents a 422 on every route with a body; this service answers 400 instead."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    bad_request = error_responses(400)[400]
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": bad_request["description"],
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    },
                }
    schemas = schema.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    # The one model name generation requests accept.
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        model_field = schemas.get(name, {}).get("properties", {}).get("model")
        if model_field is not None:
            model_field["enum"] = [app.state.serve.model_name]
    app.openapi_schema = schema
    return schema
