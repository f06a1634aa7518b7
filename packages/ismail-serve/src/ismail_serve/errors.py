"""ismail-serve's errors: `ServeError`, the base of all of them, and errors in OpenAI's shape
({"error": {"message", "type", "param", "code"}}).

Every failure the service reports goes through `APIError` or one of the handlers installed by
`install_error_handlers`, so clients written for OpenAI (and vLLM) parse all of them the same
way. FastAPI's default 422 for validation errors becomes 400, as OpenAI does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ismail_serve")


class ErrorInfo(BaseModel):
    """The body of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorInfo


class ServeError(Exception):
    """The one base class of ismail-serve's errors.

    Each error class of the package derives from it (and keeps a built-in second base such as
    RuntimeError where it had one), so the CLI reports any of them, with ismail-core's
    IsmailError, by catching these two classes.
    """


class ServeConfigError(ServeError, ValueError):
    """A setting of ismail-serve that cannot work (a flag's value, or a flag that does not
    apply to the checkpoint); the message names the flag and the fix."""


class APIError(ServeError):
    """An error to send to the client with an HTTP status and OpenAI's error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients expect."""
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        """This error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {...}}` in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error."""
    return APIError(400, message, param=param, code=code)


# Status codes a route may answer with besides 200, documented in the OpenAPI schema.
_STATUS_TEXT = {
    400: "Invalid request (OpenAI error shape)",
    401: "Missing or wrong API key",
    408: "The request ran past the server's per-request timeout",
    413: "The request body is larger than the server's --max-request-bytes",
    429: "The waiting queue is full; retry after the Retry-After header's seconds",
    500: "The engine failed while running this request",
    503: "The model is loading or the server is shutting down",
}


def busy_error(reason: object, retry_after_s: int) -> APIError:
    """The 429 for a request refused because too much work is already waiting."""
    return APIError(
        429,
        f"The server is busy: {reason}. Retry after {retry_after_s} s.",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def draining_error(reason: object) -> APIError:
    """The 503 for a request that arrives while the server drains before stopping."""
    return APIError(
        503,
        f"{reason}; no new requests are accepted.",
        type="service_unavailable",
        code="draining",
    )


def engine_failure(what: str, exc: BaseException) -> APIError:
    """The 500 for an exception raised while running one request (out of memory, ...): `what`
    failed, then the exception's type and message. Other requests go on."""
    return APIError(
        500,
        f"{what}: {type(exc).__name__}: {exc}",
        type="server_error",
        code="engine_error",
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error status codes."""
    return {code: {"model": ErrorResponse, "description": _STATUS_TEXT[code]} for code in codes}


# Names pydantic gives the members of a union in an error's location ("stop" -> "str"); they
# are not parameters, so they are left out of the parameter's name. Member names that are not
# identifiers ("list[str]", "constrained-str") are left out anyway.
_UNION_MEMBER_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict"})

_BODY_NOT_AN_OBJECT = (
    "send a JSON object (Content-Type: application/json) with 'model' and 'prompt' for "
    "/v1/completions, 'model' and 'messages' for /v1/chat/completions, or 'input' for "
    "/v1/classify."
)


def _main_error(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The error to report. For a union (`stop`: a string or a list) pydantic reports one
    error per member; the member whose type matched but whose constraint failed ("too many
    stop strings") says more than the type errors of the others ("not a string")."""
    for error in errors:
        if not str(error.get("type", "")).endswith("_type"):
            return error
    return errors[0]


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence (and the offending parameter) from pydantic's error list."""
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = _main_error(errors)
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return (
            f"The request body is not valid JSON ({detail}). Send a JSON object with "
            "Content-Type: application/json.",
            None,
        )
    # loc starts with "body" / "query"; the rest is the path to the field.
    loc = [
        str(p)
        for p in first.get("loc", ())[1:]
        if isinstance(p, int) or (p.isidentifier() and p not in _UNION_MEMBER_NAMES)
    ]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if param is None and first.get("type") == "missing":
        return f"The request body is empty; {_BODY_NOT_AN_OBJECT}", None
    if param is None and first.get("type") == "model_attributes_type":
        return f"The request body is not a JSON object; {_BODY_NOT_AN_OBJECT}", None
    if first.get("type") == "missing":
        return f"Missing required parameter '{param}'.", param
    if param is None:
        return f"Invalid request body: {msg}.", None
    extra = f" ({len(errors) - 1} more problem(s) in the request)" if len(errors) > 1 else ""
    return f"Invalid value for '{param}': {msg}.{extra}", param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error (ours, validation, routing, unexpected) in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation_error(exc)
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(exc.detail), kind),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return JSONResponse(
            error_body(f"Internal server error: {type(exc).__name__}: {exc}", "server_error"),
            status_code=500,
        )
