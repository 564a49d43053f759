"""The WebSocket gateway: remote clients speak the runtime's typed messages over one socket.

The problem: browsers and other services want streamed completions without embedding Python,
many requests per connection, and the same guarantees as in-process callers (one terminal
result per request, cancellation that reaches the provider, backpressure). The gateway is a
thin translation layer; routing, retries and accounting stay in the router and actors.

Design:

- **One session per socket**, multiplexing requests by client-chosen ids (frames:
  `protocol._frames`). Each request runs in its own task in the session's nursery with its own
  cancel scope, so a ``cancel`` frame or a disconnect cancels exactly the upstream work it
  should (the connection records the usage of what was already spent).
- **Authentication** by bearer token: the ``Authorization`` header of the handshake, or the
  ``token`` of the first ``hello`` frame (browsers cannot set headers). Every configured token
  is compared in constant time; a bad or missing token gets close code 4401 and nothing else.
- **Limits**: maximum frame size (trio-websocket closes with 1009 above it), maximum
  concurrent requests per socket (excess requests get a ``queue_full`` failure frame),
  handshake timeout (no valid hello in time: 4408). A frame that cannot be decoded gets a
  typed failure frame for its id (or for id ``""``) and never disturbs other requests.
- **Backpressure end to end**: frames are sent one at a time per socket; a request task blocked
  on a slow socket stops reading its provider stream, which stops reading the provider's
  socket. A client that has not accepted a frame for ``slow_client_timeout_s`` is closed with
  4429. WebSocket pings every ``ping_interval_s`` close connections whose peer went silent.
- **Graceful shutdown**: a ``goodbye`` frame, no new requests, running ones finish up to the
  drain time, then sockets close with 1001.

The gateway depends only on a `GatewayBackend` (the runtime implements it), not on
`supervisors`, keeping the package import direction.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Protocol

import msgspec
import trio
import trio_websocket as tw

from protocol._config import GatewayConfig, Secret
from protocol._errors import ErrorKind
from protocol._frames import (
    CLOSE_GOING_AWAY,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_VERSION,
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    Accepted,
    Cancel,
    ChatCall,
    ClientFrame,
    ConnectionStatus,
    Done,
    EmbedCall,
    EmbedDone,
    Encoding,
    EventFrame,
    FailureFrame,
    FrameError,
    Goodbye,
    Hello,
    Ping,
    Pong,
    ServerFrame,
    StatusCall,
    StatusReply,
    Welcome,
    decode_client_frame,
    encode_frame,
    encoding_for,
    frame_failure,
)
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
)

log = logging.getLogger("switchboard.gateway")


class StreamHandle(Protocol):
    """What a backend's stream yields: events, then the terminal result."""

    def __aiter__(self) -> Any: ...

    async def wait(self) -> Completion | Failure: ...


class GatewayBackend(Protocol):
    """What the gateway needs from the runtime."""

    def stream_request(self, request: ChatRequest) -> AbstractAsyncContextManager[StreamHandle]: ...

    async def chat_request(self, request: ChatRequest) -> Completion | Failure: ...

    async def embed_request(self, request: EmbedRequest) -> Embeddings | Failure: ...

    def status_report(self) -> tuple[str, list[ConnectionStatus]]: ...


class GatewayStatistics(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int
    peak_sessions: int
    sessions_total: int
    rejected_auth: int
    requests: int
    in_flight: int
    malformed_frames: int
    slow_closed: int


class _Closed(Exception):
    """The session's socket is gone (or was closed by us)."""


class _Session:
    """One client socket."""

    def __init__(self, gateway: Gateway, ws: tw.WebSocketConnection, encoding: Encoding) -> None:
        self.gateway = gateway
        self.ws = ws
        self.encoding = encoding
        self.scopes: dict[str, trio.CancelScope] = {}
        self.send_lock = trio.Lock()
        self.closed = False
        self.name = f"{ws.remote}"

    async def send(self, frame: ServerFrame) -> None:
        """Send one frame; close the session as a slow consumer if it cannot be sent in time."""
        if self.closed:
            raise _Closed
        message = encode_frame(frame, self.encoding)
        timeout = self.gateway.config.slow_client_timeout_s
        with trio.move_on_after(timeout) as scope:
            async with self.send_lock:
                try:
                    await self.ws.send_message(message)
                except tw.ConnectionClosed:
                    self.closed = True
                    raise _Closed from None
            return
        if scope.cancelled_caught:
            self.gateway._slow_closed += 1
            log.warning("closing %s: it did not read for %.1fs", self.name, timeout)
            await self.close(CLOSE_SLOW_CONSUMER, f"client did not read for {timeout:g}s")
            raise _Closed

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with trio.move_on_after(2) as scope:
            scope.shield = True
            try:
                await self.ws.aclose(code, reason)
            except Exception:  # the socket may already be broken
                log.debug("close of %s failed", self.name, exc_info=True)


class Gateway:
    """A trio-websocket server in front of a `GatewayBackend`.

    ``await nursery.start(gateway.serve)`` listens (port 0 picks a free port) and returns the
    gateway; ``gateway.url`` tells where. ``await gateway.shutdown()`` drains and stops.
    """

    def __init__(self, backend: GatewayBackend, config: GatewayConfig) -> None:
        self.backend = backend
        self.config = config
        self.port: int | None = None
        self._sessions: set[_Session] = set()
        self._closing = False
        self._drained = trio.Event()
        self._server_scope: trio.CancelScope | None = None
        self._peak = 0
        self._total = 0
        self._rejected = 0
        self._requests = 0
        self._malformed = 0
        self._slow_closed = 0
        self._in_flight = 0

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            sessions=len(self._sessions),
            peak_sessions=self._peak,
            sessions_total=self._total,
            rejected_auth=self._rejected,
            requests=self._requests,
            in_flight=self._in_flight,
            malformed_frames=self._malformed,
            slow_closed=self._slow_closed,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or `shutdown`."""
        cfg = self.config
        with trio.CancelScope() as scope:
            self._server_scope = scope
            async with trio.open_nursery() as nursery:
                server: tw.WebSocketServer = await nursery.start(
                    lambda task_status: tw.serve_websocket(
                        self._handle,
                        cfg.host,
                        cfg.port,
                        None,
                        handler_nursery=nursery,
                        max_message_size=cfg.max_frame_bytes,
                        connect_timeout=cfg.handshake_timeout_s,
                        disconnect_timeout=5,
                        task_status=task_status,
                    )
                )
                self.port = server.port
                log.info("gateway listening on %s", self.url)
                task_status.started(self)

    async def shutdown(self, drain_s: float = 10.0) -> None:
        """Tell clients goodbye, refuse new requests, let running ones finish for up to
        *drain_s* seconds, then close every socket (1001) and stop listening."""
        self._closing = True
        for session in list(self._sessions):
            with suppress(_Closed):
                await session.send(Goodbye(reason="server shutting down", drain_s=drain_s))
        if self._in_flight:
            with trio.move_on_after(drain_s):
                await self._drained.wait()
        for session in list(self._sessions):
            for scope in session.scopes.values():
                scope.cancel()
            await session.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._server_scope is not None:
            self._server_scope.cancel()

    # -- one socket ---------------------------------------------------------------------

    def _pick_subprotocol(self, request: tw.WebSocketRequest) -> str | None:
        for offered in request.proposed_subprotocols:
            if offered in SUBPROTOCOLS:
                return str(offered)
        return None

    def _header_token(self, request: tw.WebSocketRequest) -> str | None:
        for name, value in request.headers:
            if name.lower() == b"authorization":
                text = value.decode("latin-1").strip()
                if text[:7].lower() == "bearer ":
                    return text[7:].strip()
        return None

    def _authorized(self, token: str | None) -> bool:
        tokens: list[Secret] = self.config.tokens
        if not tokens:
            return True
        if token is None:
            return False
        ok = False
        for candidate in tokens:  # compare with every token: no early exit, no timing leak
            ok = (candidate == token) | ok
        return ok

    async def _handle(self, request: tw.WebSocketRequest) -> None:
        if self._closing:
            await request.reject(503, body=b"server shutting down")
            return
        subprotocol = self._pick_subprotocol(request)
        header_token = self._header_token(request)
        ws = await request.accept(subprotocol=subprotocol)
        session = _Session(self, ws, encoding_for(subprotocol))
        self._total += 1
        self._sessions.add(session)
        self._peak = max(self._peak, len(self._sessions))
        try:
            await self._session(session, header_token)
        except _Closed:
            pass
        finally:
            self._sessions.discard(session)
            await session.close(1000, "bye")

    async def _session(self, session: _Session, header_token: str | None) -> None:
        cfg = self.config
        ws = session.ws
        first: ClientFrame | None = None
        needs_hello = not self._authorized(header_token)
        if needs_hello:
            with trio.move_on_after(cfg.handshake_timeout_s) as scope:
                try:
                    message = await ws.get_message()
                except tw.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                await session.close(CLOSE_HANDSHAKE_TIMEOUT, "no hello in time")
                return
            try:
                first = decode_client_frame(message)
            except FrameError:
                first = None
            if not isinstance(first, Hello) or not self._authorized(first.token):
                self._rejected += 1
                await session.close(CLOSE_UNAUTHORIZED, "unauthorized")
                return
        if isinstance(first, Hello) and first.version != PROTOCOL_VERSION:
            reason = f"unsupported protocol version {first.version}"
            await session.close(CLOSE_UNSUPPORTED_VERSION, reason)
            return
        welcome = Welcome(
            max_frame_bytes=cfg.max_frame_bytes, max_concurrent=cfg.max_concurrent_per_client
        )
        await session.send(welcome)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pinger, session)
            try:
                await self._read_loop(session, nursery)
            finally:
                nursery.cancel_scope.cancel()

    async def _pinger(self, session: _Session) -> None:
        interval = self.config.ping_interval_s
        if not interval or not math.isfinite(interval):
            return
        while not session.closed:
            await trio.sleep(interval)
            with trio.move_on_after(interval) as scope:
                try:
                    await session.ws.ping()
                except (tw.ConnectionClosed, ValueError):
                    return
            if scope.cancelled_caught:
                await session.close(1011, "ping timeout")
                return

    async def _read_loop(self, session: _Session, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await session.ws.get_message()
            except tw.ConnectionClosed:
                return
            try:
                frame = decode_client_frame(message)
            except FrameError as exc:
                self._malformed += 1
                failure = frame_failure(ErrorKind.BAD_REQUEST, str(exc), id=exc.id)
                nursery.start_soon(self._reply_quietly, session, failure)
                continue
            if isinstance(frame, ChatCall | EmbedCall):
                self._start_request(session, nursery, frame)
            elif isinstance(frame, Cancel):
                scope = session.scopes.get(frame.id)
                if scope is not None:
                    scope.cancel()
            elif isinstance(frame, Ping):
                nursery.start_soon(self._reply_quietly, session, Pong(nonce=frame.nonce))
            elif isinstance(frame, StatusCall):
                status, rows = self.backend.status_report()
                reply = StatusReply(id=frame.id, status=status, connections=rows)
                nursery.start_soon(self._reply_quietly, session, reply)
            # A late or repeated hello is harmless: ignored.

    async def _reply_quietly(self, session: _Session, frame: ServerFrame) -> None:
        with suppress(_Closed):
            await session.send(frame)

    def _start_request(
        self, session: _Session, nursery: trio.Nursery, frame: ChatCall | EmbedCall
    ) -> None:
        rid = frame.id
        reject: FailureFrame | None = None
        if self._closing:
            reject = frame_failure(ErrorKind.CANCELLED, "server shutting down", id=rid)
        elif rid in session.scopes:
            reject = frame_failure(ErrorKind.BAD_REQUEST, f"request id {rid!r} is in use", id=rid)
        elif len(session.scopes) >= self.config.max_concurrent_per_client:
            reject = FailureFrame(
                id=rid,
                failure=Failure.of(
                    ErrorKind.QUEUE_FULL,
                    f"at most {self.config.max_concurrent_per_client} concurrent requests "
                    "per connection; wait for one to finish",
                    request_id=rid,
                    retry_after=1.0,
                ),
            )
        if reject is not None:
            nursery.start_soon(self._reply_quietly, session, reject)
            return
        self._requests += 1
        self._in_flight += 1
        scope = trio.CancelScope()
        session.scopes[rid] = scope
        nursery.start_soon(self._run_request, session, frame, scope)

    async def _run_request(
        self, session: _Session, frame: ChatCall | EmbedCall, scope: trio.CancelScope
    ) -> None:
        rid = frame.id
        request = frame.request
        if request.request_id != rid and not request.request_id:
            request = msgspec.structs.replace(request, request_id=rid)
        terminal: ServerFrame | None = None
        try:
            with scope:
                await session.send(Accepted(id=rid))
                if isinstance(frame, EmbedCall):
                    assert isinstance(request, EmbedRequest)
                    result = await self.backend.embed_request(request)
                    terminal = (
                        EmbedDone(id=rid, result=result)
                        if isinstance(result, Embeddings)
                        else FailureFrame(id=rid, failure=result)
                    )
                elif frame.stream:
                    assert isinstance(request, ChatRequest)
                    terminal = await self._stream(session, rid, request)
                else:
                    assert isinstance(request, ChatRequest)
                    chat = await self.backend.chat_request(request)
                    terminal = (
                        Done(id=rid, result=chat)
                        if isinstance(chat, Completion)
                        else FailureFrame(id=rid, failure=chat)
                    )
            if scope.cancelled_caught:
                terminal = frame_failure(ErrorKind.CANCELLED, "cancelled by the client", id=rid)
            if terminal is not None:
                await session.send(terminal)
        except _Closed:
            pass
        finally:
            session.scopes.pop(rid, None)
            self._in_flight -= 1
            if self._closing and not self._in_flight:
                self._drained.set()

    async def _stream(self, session: _Session, rid: str, request: ChatRequest) -> ServerFrame:
        async with self.backend.stream_request(request) as handle:
            async for event in handle:
                await session.send(EventFrame(id=rid, event=event))
            result = await handle.wait()
        if isinstance(result, Completion):
            return Done(id=rid, result=result)
        return FailureFrame(id=rid, failure=result)
