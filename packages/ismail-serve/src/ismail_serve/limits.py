"""The request-body limit: a 413 before any of an oversized body is parsed.

Without a limit one client could send a body of any size, and the server would hold it in
memory, parse it as JSON and tokenize it before finding that it cannot fit the context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ismail_serve.errors import APIError

# A few MiB: far above any prompt that fits a context of tens of thousands of tokens (about
# 6 bytes per token as text or as a JSON token id), far below what hurts the server.
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def too_large(limit: int) -> APIError:
    """413 in OpenAI's error shape."""
    # Imported here: the CLI reads this module's default, and errors.py pulls in FastAPI.
    from ismail_serve.errors import APIError

    return APIError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes "
        "(--max-request-bytes); send a shorter prompt.",
        code="request_too_large",
    )


def _declared_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimit:
    """ASGI middleware: 413 for an HTTP request body over `get_limit()` bytes (None: no
    limit). A declared Content-Length over the limit is refused before reading anything; a
    chunked body is counted as it arrives and refused as soon as it passes the limit. A body
    within the limit is handed on unchanged (read once here, replayed to the app)."""

    def __init__(self, app: ASGIApp, get_limit: Callable[[], int | None]) -> None:
        self.app = app
        self.get_limit = get_limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send):
        limit = self.get_limit()
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            return await too_large(limit).response()(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            size += len(message.get("body", b""))
            if size > limit:
                return await too_large(limit).response()(scope, receive, send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that returns `messages` first, then what the client sends next (a
    disconnect, which the routes watch for)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
