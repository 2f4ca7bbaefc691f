"""The door of the server, as plain ASGI so it runs before any parsing: the API key on everything under /v1,
and the body-size cap (413) on every request.

The body is read here, up to the cap, and replayed to the app: a client that sends 50 MB without a
Content-Length (chunked) is cut off after the first `max_body_bytes`, not buffered whole.
"""

from __future__ import annotations

import hmac
import json

from tunesmith.serve.protocol import error_body


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"].startswith("/v1") and not self._authorized(scope):
            return await send_json(send, 401, error_body(
                "missing or incorrect API key: send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key"), [(b"www-authenticate", b"Bearer")])
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_json(send, 400, error_body("the Content-Length header is not a number"))
            if int(declared) > self.max_body_bytes:
                return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the app expects

        return await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        header = _header(scope, b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _too_large(self, send) -> None:
        await send_json(send, 413, error_body(f"the request body is larger than {self.max_body_bytes} bytes",
                                              code="request_too_large"))
