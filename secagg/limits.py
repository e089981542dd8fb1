"""Transport limits: request bodies counted as they stream, and guarded connections.

Two layers, both sized by :class:`secagg.settings.Settings`:

* :class:`BodyLimitMiddleware`, a pure ASGI middleware, counts body bytes as
  the application reads them (chunked bodies included) and answers 413 the
  moment the count passes the request's limit: nothing upstream ever holds
  more than the limit plus one transport chunk. A declared ``Content-Length``
  over the limit is refused before the body is read at all. The limit depends
  on the request (``limit_for``): large only where the sender is known before
  the body is read, small for everything an anonymous peer can send. The
  whole body must arrive within ``body_timeout_s`` (else a typed 408).
* :func:`guarded_h11_protocol` builds uvicorn's h11 protocol with a header
  deadline (a connection whose request head is not complete within
  ``header_timeout_s`` is closed: slowloris), and two connection caps checked
  when a connection opens: one for the whole server and a smaller one per peer
  address, so one host holding its maximum of half-open connections leaves
  room for everybody else (``/healthz`` included). uvicorn's own
  ``limit_concurrency`` is not used: when full it answers 503 to everyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("secagg.limits")


_CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """The request body passed the configured limit while it was being read.

    An HTTPException so that FastAPI's body parsing re-raises it as it is (it
    turns any other error while reading a body into a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body of more than {limit} bytes refused")
        self.limit = limit


class BodyTimeout(HTTPException):
    """The request body did not arrive within the body deadline (a slow-body attack)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


def _json_error(status: int, code: str, detail: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit_for(scope)`` with a typed 413, counting as they stream.

    Also the last line of defence: an exception escaping the application
    becomes a typed 500 (the request changed nothing), never a traceback page.
    """

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[Scope], int], body_timeout_s: float
    ) -> None:
        self.app, self.limit_for, self.body_timeout_s = app, limit_for, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared: bytes | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                has_body = has_body or value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if declared is not None:
            # h11 has already refused a malformed Content-Length with a 400.
            if not declared.isdigit():
                await self._respond(send, 400, "bad_content_length", "Content-Length is malformed")
                return
            if int(declared) > limit:
                detail = f"body of {int(declared)} bytes exceeds {limit}"
                await self._respond(send, 413, "body_too_large", detail)
                return
        received = 0
        body_done = not has_body
        started = False
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout_s

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            # The whole body must arrive by the deadline: a peer trickling it
            # would otherwise hold a request (and its buffer) for ever.
            try:
                message = await asyncio.wait_for(receive(), body_deadline - loop.time())
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    # Answered before the body was read (refused on its headers):
                    # close the connection rather than read and discard the rest.
                    message = {**message, "headers": [*message["headers"], _CLOSE]}
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTimeout as exc:
            if not started:
                await self._respond(send, 408, "body_timeout", str(exc.detail))
        except BodyTooLarge:
            if not started:
                detail = f"body of more than {limit} bytes refused"
                await self._respond(send, 413, "body_too_large", detail)
        except ClientDisconnect:
            # The peer went away while its body was being read (a client process
            # killed mid-request): nobody is left to answer, and nothing changed.
            log.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                detail = "internal error; the request changed nothing"
                await self._respond(send, 500, "internal_error", detail)

    @staticmethod
    async def _respond(send: Send, status: int, code: str, detail: str) -> None:
        start, body = _json_error(status, code, detail)
        await send(start)
        await send(body)


@dataclass
class ConnectionLimits:
    """Caps shared by every connection of one server (one event loop)."""

    max_connections: int
    max_per_peer: int
    header_timeout_s: float
    open: Counter[str] = field(default_factory=Counter)
    total: int = 0
    refused: int = 0

    def admit(self, peer: str) -> bool:
        if self.total >= self.max_connections or self.open[peer] >= self.max_per_peer:
            self.refused += 1
            return False
        self.total += 1
        self.open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.total -= 1
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 80\r\n\r\n"
)
_REFUSAL_BODY = json.dumps(
    {"error": "too_many_connections", "detail": "connection cap reached; retry later"}
).encode()
_REFUSAL = _REFUSAL.replace(b"80", str(len(_REFUSAL_BODY)).encode()) + _REFUSAL_BODY


def guarded_h11_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``limits`` applied (pass it as ``http=``)."""

    class GuardedH11Protocol(H11Protocol):
        _peer: str | None = None
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peername = transport.get_extra_info("peername")
            peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
            if not limits.admit(peer):
                # Refused before uvicorn sees it: no request task, no state.
                self.transport = transport
                transport.write(_REFUSAL)
                transport.close()
                return
            self._peer = peer
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peer is None:
                return  # a refused connection
            limits.release(self._peer)
            self._peer = None
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._peer is None:
                return
            super().data_received(data)
            self._watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_head()

        # The head of a request is complete once h11 leaves IDLE for this cycle.
        def _watch_head(self) -> None:
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                if self._header_timer is None and self.timeout_keep_alive_task is None:
                    self._arm_header_timer()  # bytes of the next request head are arriving
            else:
                self._cancel_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
