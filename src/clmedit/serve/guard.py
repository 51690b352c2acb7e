"""What every request passes before the app sees it: the API key and the body-size bound.

`Guard` is plain ASGI middleware. With a key, a request without `Authorization: Bearer KEY`
(compared in constant time) gets 401 and reaches nothing; the key is never logged or echoed. A
body longer than the bound gets 413: at once when its Content-Length says so, else as soon as the
bytes read pass it (a chunked body), so the server never holds more than the bound.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from clmedit.serve.schemas import error_body


class BodyTooLarge(Exception):
    """A request body read past the server's bound."""


class Guard:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self._key is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), b"Bearer " + self._key
        ):
            return await _reply(send, 401, "a valid API key is needed: send it as 'Authorization: Bearer KEY'",
                                "invalid_api_key")  # fmt: skip
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return await _reply(send, 400, "the Content-Length header is not a number")
        if int(length) > self.max_body_bytes:
            return await _reply(send, 413, self._too_large())
        seen = 0

        async def bounded() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise BodyTooLarge(self._too_large())
            return message

        await self.app(scope, bounded, send)

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body_bytes} bytes"


async def _reply(send: Any, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
