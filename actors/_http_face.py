"""The HTTP face: OpenAI- and Anthropic-compatible HTTP on the gateway's port.

Problem: users coming from LiteLLM proxy or Portkey point the official SDKs at a base URL
(``openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key=TOKEN)``) and expect chat
completions, embeddings and the model list to work, with OpenAI's error shape and status codes;
operators expect ``/metrics``, ``/healthz`` and ``/readyz``. The WebSocket gateway speaks none
of that. This module serves it, from the same runtime and with the same tokens, translating
with the pure codecs of ``protocol._openai_face`` and ``protocol._anthropic_face``.

Design:

- **One port for both.** The gateway's accept loop (which counts connections against
  ``max_connections``) hands each new TCP stream to `HttpFace.dispatch`. It reads until h11
  has parsed the first request head (bounded in size, and in time by ``handshake_timeout_s``;
  bytes that cannot start a request are known at once): a WebSocket upgrade is handed back
  to the gateway as a stream that first replays the bytes already read (`_Replay`), anything
  else is served here. So ``ws://host:8765`` and
  ``http://host:8765/v1`` are the same server and no second port needs opening.
- **A real HTTP server, not ours.** HTTP/1.1 (keep-alive, chunked bodies, pipelining,
  ``Expect: 100-continue``, h2c) is Hypercorn's: each connection is run by Hypercorn's trio
  connection server (``hypercorn.trio.tcp_server.TCPServer``, the class its own ``serve``
  runs per accepted stream) around a plain ASGI app - this class's ``__call__``, no web
  framework. That class is an internal of Hypercorn, so the version is pinned exactly
  (``constraints.txt``) and a test drives it end to end.
- **The gateway's clients, the gateway's limits.** The face asks the gateway's `ClientKeys`
  (``actors._client_keys``, shared with the WebSocket face) the same three questions:
  ``authenticate`` the token of each request (``Authorization: Bearer`` from the openai SDK,
  else ``x-api-key`` from the anthropic SDK; a bad one is a 401), ``admit`` the decoded
  request under its client's limits (a refusal is a 429 with ``Retry-After``, or a 403 for a
  model off the client's allow-list), and ``settle`` it exactly once with its result. So a
  client's RPM, TPM and budget hold across both faces. ``/healthz`` and ``/readyz`` are open
  (load balancers and probes carry no token); everything else needs a valid token.
- **Cancellation reaches the provider.** While the runtime works on a request, a task waits
  for ASGI's ``http.disconnect``; a client that goes away (or whose connection breaks under a
  write) cancels the work, and leaving ``rt.stream`` cancels the upstream request (its usage
  is still recorded by the connection).
- **Backpressure end to end, bounded.** Each chunk is written before the next event is read,
  so a slow client slows the provider read. Hypercorn's writes cannot be cancelled (they are
  shielded), so the stream under it (`_Replay`) bounds each write by ``slow_client_timeout_s``:
  a client that does not read for that long has its connection closed, which ends the request
  as a disconnect.
- **Errors are answers.** A stream that fails before its first chunk gets a proper HTTP error
  status (so the SDK raises ``RateLimitError``, ``NotFoundError``...); after the first chunk,
  an error event. Every failed request logs one line (id, peer, path, model, status, kind, a
  short message; never a token, a key or the prompt). Nothing a client sends can crash the
  server: a bug in one request is a 500 for that request and a log line.
- **Graceful shutdown**: new requests get 503, idle keep-alive connections close, running
  requests finish up to the drain time, then are cancelled (503, or an error event).
- **The status page** (``/``, ``/status``, ``/status/events``) is ``actors._status_page``'s;
  this class only routes to it, authenticates it and runs its event streams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar, cast

import h11
import msgspec
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from protocol._anthropic_face import MessageEvents, MessagesCall, decode_messages, message_body
from protocol._config import GatewayConfig
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    StreamEvent,
)
from protocol._openai_face import (
    ChatCall,
    ChatChunks,
    EmbedCall,
    WireError,
    admission_error,
    completion_body,
    decode_chat,
    decode_embed,
    embeddings_body,
    encode,
    failure_error,
    model_object,
    models_body,
)

from ._client_keys import ClientGrant, ClientKey, ClientKeys
from ._gateway import GatewayBackend
from ._status_page import PAGE, PAGE_HEADERS, StatusPage, StatusSource, query_token

log = logging.getLogger("switchboard.http")

Scope = dict[str, Any]
ASGIMessage = dict[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

HEAD_LIMIT: Final = 16 * 1024
"""The largest first request head looked at (Hypercorn's own limit for an incomplete request
head is the same)."""

_READ: Final = 65536
_CLOSE_GRACE: Final = 2.0
_LOG_MESSAGE_CHARS: Final = 200
_REQUEST_ID: Final = re.compile(r"^[\w.:-]{1,128}$")
_JSON: Final = "application/json"
_SSE: Final = "text/event-stream; charset=utf-8"
_SSE_HEADERS: Final = [(b"cache-control", b"no-cache")]  # start() adds the content type


class HttpBackend(GatewayBackend, Protocol):
    """What the face needs from the runtime, beyond the gateway's calls."""

    def model_list(self) -> list[tuple[str, str]]:
        """Every routable model name as ``(id, owned_by)``."""
        ...

    def routable(self, model: str) -> bool:
        """Whether some connection serves *model* (globs in ``serves`` included)."""
        ...

    def health_report(self) -> tuple[str, bytes]:
        """The health status (``ok``, ``degraded``, ``down``) and the health as JSON."""
        ...

    def metrics_text(self) -> str:
        """The runtime's metrics in the Prometheus text format."""
        ...


class HttpFaceStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """``responses`` counts answers by HTTP status; ``disconnects`` requests whose client left
    before its answer ended; ``slow_closed`` connections closed because a write stayed
    blocked for ``slow_client_timeout_s``."""

    requests: int
    in_flight: int
    responses: dict[int, int]
    disconnects: int
    slow_closed: int
    connections: int


# --------------------------------------------------------------------------- one port


async def sniff(stream: trio.abc.ReceiveStream) -> tuple[bytes, bool]:
    """Read *stream* until h11 has parsed the first request head, or found that the bytes are
    not one (or the peer stopped sending, or `HEAD_LIMIT` bytes brought no complete head):
    the bytes read, and whether they are a WebSocket handshake (a ``GET`` whose ``Upgrade``
    names ``websocket`` and whose ``Connection`` names ``upgrade``, as wsproto checks).
    Whatever is not a handshake is Hypercorn's to answer, junk included."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    buffer = bytearray()
    while True:
        data = bytes(await stream.receive_some(_READ))
        buffer += data
        try:
            conn.receive_data(data)  # b"": the peer's end of stream
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return bytes(buffer), False
        if isinstance(event, h11.Request):
            return bytes(buffer), _is_upgrade(event)
        if event is not h11.NEED_DATA or not data:
            return bytes(buffer), False


def _is_upgrade(request: h11.Request) -> bool:
    if request.method != b"GET":
        return False
    upgrade = connection = b""
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade += b"," + value.lower()
        elif name == b"connection":
            connection += b"," + value.lower()
    return b"websocket" in _tokens(upgrade) and b"upgrade" in _tokens(connection)


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip() for token in value.split(b",")}


class _Replay(trio.abc.HalfCloseableStream):
    """A TCP stream whose first reads return *head* (bytes already read from it), then read
    on. ``write_timeout`` (seconds) bounds each ``send_all``: one still blocked after it
    breaks the stream (closes the socket) and raises `trio.BrokenResourceError`, even inside
    a shielded scope. ``socket`` is the TCP socket (Hypercorn reads the peer's address
    there); ``repr`` is the peer's ``host:port`` (trio-websocket's name for a stream it does
    not know)."""

    def __init__(
        self,
        stream: trio.SocketStream,
        head: bytes,
        *,
        write_timeout: float | None = None,
        on_slow: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self._head = head
        self._write_timeout = write_timeout
        self._on_slow = on_slow

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.stream.socket

    def __repr__(self) -> str:
        try:
            host, port = self.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            await trio.lowlevel.checkpoint()
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        timeout = self._write_timeout
        if timeout is None or not math.isfinite(timeout):
            await self.stream.send_all(data)
            return
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            if self._on_slow is not None:
                self._on_slow()
            await trio.aclose_forcefully(self.stream)
            raise trio.BrokenResourceError(f"the client did not read for {timeout:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


# --------------------------------------------------------------------------- one exchange


class _ClientGone(Exception):
    """The client disconnected, or its connection broke under a write."""


class _Exchange:
    """One HTTP request and its answer: the ASGI channels, the request id, and the error
    shape of the API it addressed (``openai`` or ``anthropic``)."""

    def __init__(
        self, face: HttpFace, scope: Scope, receive: Receive, send: Send, shape: str
    ) -> None:
        self.face = face
        self.scope = scope
        self.receive = receive
        self._send = send
        self.shape = shape
        self.headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            self.headers.setdefault(bytes(name).lower(), bytes(value))
        given = self.header(b"x-request-id")
        self.request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        self.started = False
        self.finished = False
        self.status = 0
        self.gone = False
        self.model = ""
        self.client = ""

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def peer(self) -> str:
        client = self.scope.get("client")
        if isinstance(client, tuple | list) and len(client) >= 2:
            host = str(client[0])
            return f"[{host}]:{client[1]}" if ":" in host else f"{host}:{client[1]}"
        return "?"

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1").strip()

    def token(self) -> str | None:
        """The bearer token: ``Authorization: Bearer``, else ``x-api-key``."""
        auth = self.header(b"authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return self.header(b"x-api-key")

    async def send(self, message: ASGIMessage) -> None:
        """Send one ASGI message; a connection that cannot take it raises `_ClientGone`."""
        if self.gone:
            raise _ClientGone
        try:
            await self._send(message)
        except trio.Cancelled:
            raise
        except Exception as exc:  # Hypercorn or h11 refusing a write to a dead connection
            log.debug("write to %s failed: %r", self.peer, exc)
            self.gone = True
            raise _ClientGone from None

    def _base_headers(self, content_type: str) -> list[tuple[bytes, bytes]]:
        id_header = b"request-id" if self.shape == "anthropic" else b"x-request-id"
        return [(b"content-type", content_type.encode()), (id_header, self.request_id.encode())]

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], content_type: str
    ) -> None:
        self.started = True
        self.status = status
        self.face._count(status)
        message = {
            "type": "http.response.start",
            "status": status,
            "headers": [*self._base_headers(content_type), *headers],
        }
        await self.send(message)

    async def write(self, data: bytes, *, more: bool = True) -> None:
        if not more:
            self.finished = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = _JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        extra = [(b"content-length", str(len(body)).encode()), *(headers or [])]
        await self.start(status, extra, content_type)
        await self.write(body, more=False)

    async def fail(self, error: WireError) -> None:
        """Answer with *error* in this API's shape (the response must not have started)."""
        body = error.anthropic_body() if self.shape == "anthropic" else error.openai_body()
        headers = [(k.encode(), v.encode()) for k, v in error.headers()]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await self.respond(error.status, body, headers=headers)

    async def read_body(self) -> bytes | WireError:
        """The whole request body, or the error that refuses it: a content type that is not
        JSON (415), more than ``max_frame_bytes`` (413), not sent within
        ``handshake_timeout_s`` (408)."""
        cfg = self.face.config
        ctype = self.header(b"content-type")
        if ctype is not None:
            media = ctype.split(";", 1)[0].strip().lower()
            if media != _JSON and not media.endswith("+json"):
                return WireError(
                    status=415,
                    message=f"unsupported content type {ctype!r}: send the body as JSON with "
                    "Content-Type: application/json",
                )
        limit = cfg.max_frame_bytes
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(cfg.handshake_timeout_s) as timer:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    raise _ClientGone
                data = bytes(message.get("body", b""))
                size += len(data)
                if size > limit:
                    return _too_large(limit)
                chunks.append(data)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert timer.cancelled_caught
        timeout = cfg.handshake_timeout_s
        return WireError(status=408, message=f"the request body did not arrive in {timeout:g}s")


def _too_large(limit: int) -> WireError:
    return WireError(
        status=413,
        message=f"the request body is larger than {limit:,} bytes ([gateway] max_frame_bytes)",
    )


class _Renderer(Protocol):
    sent: bool

    def event(self, event: StreamEvent) -> bytes | Failure: ...

    def finish(self, completion: Completion) -> bytes: ...

    def error(self, error: WireError) -> bytes: ...


_Handler = Callable[["HttpFace", _Exchange], Awaitable[None]]
_Outcome = Completion | Embeddings | Failure | None
"""What a request ended with, for settling its client's grant (``None``: unknown)."""


class _Call(Protocol):
    @property
    def request(self) -> ChatRequest | EmbedRequest: ...


_C = TypeVar("_C", bound=_Call)


def _decode_chat(body: bytes, request_id: str) -> ChatCall | WireError:
    return decode_chat(body, request_id=request_id)


def _decode_embed(body: bytes, request_id: str) -> EmbedCall | WireError:
    return decode_embed(body, request_id=request_id)


def _decode_messages(body: bytes, request_id: str) -> MessagesCall | WireError:
    return decode_messages(body, request_id=request_id)


# --------------------------------------------------------------------------- the face


class HttpFace:
    """The ASGI app and its serving (see the module docstring).

    ``dispatch(stream)`` is called by the gateway for each new TCP connection;
    ``shutdown(drain_s)`` by the gateway's shutdown. ``wall_clock`` (epoch seconds) stamps
    the ``created`` field of answers. ``status`` feeds the status page (without it, ``/``
    and ``/status*`` are 404).
    """

    def __init__(
        self,
        backend: HttpBackend,
        config: GatewayConfig,
        *,
        clients: ClientKeys,
        wall_clock: Callable[[], float] = time.time,
        status: StatusSource | None = None,
    ) -> None:
        self.backend = backend
        self.status_page = None if status is None else StatusPage(status)
        self.config = config
        self.clients = clients
        self.wall_clock = wall_clock
        self._closing = False
        self._scopes: set[trio.CancelScope] = set()
        self._in_flight = 0
        self._drained = trio.Event()
        self._requests = 0
        self._responses: dict[int, int] = {}
        self._disconnects = 0
        self._slow_closed = 0
        self._connections = 0
        hyper = HypercornConfig()
        hyper.errorlog = log
        hyper.accesslog = None
        hyper.include_server_header = False
        self._hypercorn = hyper
        self._context = WorkerContext(None)
        self._app = ASGIWrapper(cast(Any, self))

    def statistics(self) -> HttpFaceStatistics:
        return HttpFaceStatistics(
            requests=self._requests,
            in_flight=self._in_flight,
            responses=dict(self._responses),
            disconnects=self._disconnects,
            slow_closed=self._slow_closed,
            connections=self._connections,
        )

    # -- serving ------------------------------------------------------------------------

    async def dispatch(self, stream: trio.SocketStream) -> trio.abc.HalfCloseableStream | None:
        """Serve the connection *stream* unless it opens with a WebSocket handshake: then
        return a stream that replays what was read, for the gateway's WebSocket path.
        ``None``: the connection was served here (or sent nothing in time) and is done."""
        sniffed: tuple[bytes, bool] | None = None
        with trio.move_on_after(self.config.handshake_timeout_s):
            try:
                sniffed = await sniff(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
        if sniffed is None:
            return None  # no request head in time: the gateway closes the connection
        head, upgrade = sniffed
        if upgrade:
            return _Replay(stream, head)
        if head:
            await self._serve_http(stream, head)
        return None

    async def _serve_http(self, stream: trio.SocketStream, head: bytes) -> None:
        """Run Hypercorn's connection server on *stream* (its first bytes: *head*)."""
        replay = _Replay(
            stream, head, write_timeout=self.config.slow_client_timeout_s, on_slow=self._slow
        )
        self._connections += 1
        try:
            server = TCPServer(
                self._app, self._hypercorn, self._context, ConnectionState({}), cast(Any, replay)
            )
            await server.run()
        finally:
            self._connections -= 1

    def _slow(self) -> None:
        self._slow_closed += 1
        log.warning(
            "closing an HTTP connection: the client did not read for %gs",
            self.config.slow_client_timeout_s,
        )

    async def shutdown(self, drain_s: float = 10.0) -> None:
        """Refuse new requests (503), close idle connections, let running requests finish
        for up to *drain_s* seconds, then cancel what is left."""
        self._closing = True
        if self.status_page is not None:
            self.status_page.close()
        await self._context.terminated.set()
        if self._in_flight:
            with trio.move_on_after(drain_s):
                await self._drained.wait()
        if self._in_flight:
            for scope in list(self._scopes):
                scope.cancel()
            with trio.move_on_after(_CLOSE_GRACE):
                await self._drained.wait()

    def _count(self, status: int) -> None:
        self._responses[status] = self._responses.get(status, 0) + 1

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application (HTTP only; a WebSocket upgrade that reaches Hypercorn, on a
        connection that began as plain HTTP, is refused)."""
        if scope.get("type") == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope.get("type") != "http":
            return
        path = str(scope.get("path", ""))
        methods = _ROUTES.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = {"GET": HttpFace._model}
        shape = "anthropic" if path == "/v1/messages" else "openai"
        ex = _Exchange(self, scope, receive, send, shape)
        self._requests += 1
        try:
            if methods is None:
                await ex.fail(_not_found(path))
                return
            handler = methods.get(str(scope.get("method", "")))
            if handler is None:
                allow = ", ".join(sorted(methods)).encode()
                error = WireError(
                    status=405,
                    message=f"method {scope.get('method')} is not allowed on {path}; "
                    f"use {allow.decode()}",
                )
                body = error.openai_body() if shape == "openai" else error.anthropic_body()
                await ex.respond(405, body, headers=[(b"allow", allow)])
                return
            await handler(self, ex)
        except _ClientGone:
            self._disconnects += 1
        except Exception as exc:  # a bug ends this request only, never the server
            log.exception("request %s from %s on %s failed", ex.request_id, ex.peer, path)
            if not ex.started and not ex.gone:
                error = WireError(status=500, type="server_error", message=f"internal error: {exc}")
                with contextlib.suppress(_ClientGone):
                    await ex.fail(error)

    # -- request plumbing ---------------------------------------------------------------

    def _authenticate(self, ex: _Exchange) -> ClientKey | None:
        """The one authentication step: the client whose token the request carries."""
        client = self.clients.authenticate(ex.token())
        if client is not None:
            ex.client = client.name
        return client

    async def _api(
        self,
        ex: _Exchange,
        decode: Callable[[bytes, str], _C | WireError],
        run: Callable[[_Exchange, _C], Awaitable[_Outcome]],
    ) -> None:
        """The common path of an API call: refuse while closing (503) or without a valid
        token (401); read and *decode* the body (400, 408, 413, 415); admit the request under
        its client's limits (429, 403); *run* it, cancellable by a client disconnect and by
        shutdown (answered with 503, or an error event); settle the client's grant with the
        outcome, exactly once."""
        if self._closing:
            await ex.fail(_shutting_down())
            return
        client = self._authenticate(ex)
        if client is None:
            await ex.fail(_unauthorized())
            return
        body = await ex.read_body()
        call = body if isinstance(body, WireError) else decode(body, ex.request_id)
        if isinstance(call, WireError):
            self._log_error(ex, call, None)
            await ex.fail(call)
            return
        request = call.request
        ex.model = request.model
        grant = self.clients.admit(client, request, trio.current_time())
        if isinstance(grant, Failure):
            error = admission_error(grant)
            self._log_error(ex, error, grant)
            await ex.fail(error)
            return
        await self._admitted(ex, grant, run, call)

    async def _admitted(
        self,
        ex: _Exchange,
        grant: ClientGrant,
        run: Callable[[_Exchange, _C], Awaitable[_Outcome]],
        call: _C,
    ) -> None:
        outcome: _Outcome = None
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._in_flight += 1
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_disconnect, ex, nursery.cancel_scope)
                    try:
                        outcome = await run(ex, call)
                    finally:
                        nursery.cancel_scope.cancel()
            if ex.gone:
                raise _ClientGone
            if scope.cancelled_caught and not ex.finished:
                failure = Failure.of(ErrorKind.CANCELLED, "server shutting down")
                await self._end_with_failure(ex, failure, None)
        finally:
            self.clients.settle(grant, outcome, trio.current_time())
            self._scopes.discard(scope)
            self._in_flight -= 1
            if self._closing and not self._in_flight:
                self._drained.set()

    async def _watch_disconnect(self, ex: _Exchange, scope: trio.CancelScope) -> None:
        """Cancel *scope* when the client disconnects (ASGI ``http.disconnect``) before the
        answer ended (Hypercorn also says ``http.disconnect`` once the last byte went out)."""
        while True:
            message = await ex.receive()
            if message.get("type") == "http.disconnect":
                if not ex.finished:
                    ex.gone = True
                    scope.cancel()
                return

    async def _end_with_failure(
        self, ex: _Exchange, failure: Failure, renderer: _Renderer | None
    ) -> None:
        """Answer *failure*: an HTTP error before the response started, an error event
        (ending the stream) after."""
        error = failure_error(failure)
        self._log_error(ex, error, failure)
        if not ex.started:
            await ex.fail(error)
        elif not ex.finished:
            data = renderer.error(error) if renderer is not None else b""
            await ex.write(data, more=False)

    async def _stream(
        self, ex: _Exchange, request: ChatRequest, renderer: _Renderer
    ) -> Completion | Failure | None:
        """Stream *request*, rendering its events, and return its result (``None`` when the
        client cannot be given one). The response starts with the first bytes to send, so a
        failure before any is a plain HTTP error."""
        async with self.backend.stream_request(request) as handle:
            async for event in handle:
                out = renderer.event(event)
                if isinstance(out, Failure):
                    await self._end_with_failure(ex, out, renderer)
                    return None  # leaving the stream cancels the upstream request
                if out:
                    if not ex.started:
                        await ex.start(200, list(_SSE_HEADERS), _SSE)
                    await ex.write(out)
            result = await handle.wait()
        if isinstance(result, Failure):
            await self._end_with_failure(ex, result, renderer)
            return result
        if not ex.started:
            await ex.start(200, list(_SSE_HEADERS), _SSE)
        await ex.write(renderer.finish(result), more=False)
        return result

    async def _answer(
        self,
        ex: _Exchange,
        result: Completion | Embeddings | Failure,
        render: Callable[[Any], bytes],
    ) -> Completion | Embeddings | Failure:
        """Answer a non-streamed *result*: ``render(result)`` with 200, or the failure."""
        if isinstance(result, Failure):
            await self._end_with_failure(ex, result, None)
        else:
            headers = _answered_by(result.connection, result.model)
            await ex.respond(200, render(result), headers=headers)
        return result

    # -- endpoints ----------------------------------------------------------------------

    async def _chat(self, ex: _Exchange) -> None:
        await self._api(ex, _decode_chat, self._run_chat)

    async def _run_chat(self, ex: _Exchange, call: ChatCall) -> _Outcome:
        request = call.request
        created = int(self.wall_clock())
        if call.stream:
            chunks = ChatChunks(
                request_id=ex.request_id,
                model=request.model,
                created=created,
                include_usage=call.include_usage,
            )
            return await self._stream(ex, request, chunks)
        result = await self.backend.chat_request(request)
        return await self._answer(
            ex, result, lambda c: completion_body(c, model=request.model, created=created)
        )

    async def _messages(self, ex: _Exchange) -> None:
        await self._api(ex, _decode_messages, self._run_messages)

    async def _run_messages(self, ex: _Exchange, call: MessagesCall) -> _Outcome:
        request = call.request
        if call.stream:
            events = MessageEvents(request_id=ex.request_id, model=request.model)
            return await self._stream(ex, request, events)
        result = await self.backend.chat_request(request)
        return await self._answer(ex, result, lambda c: message_body(c, model=request.model))

    async def _embeddings(self, ex: _Exchange) -> None:
        await self._api(ex, _decode_embed, self._run_embeddings)

    async def _run_embeddings(self, ex: _Exchange, call: EmbedCall) -> _Outcome:
        model = call.request.model
        result = await self.backend.embed_request(call.request)
        return await self._answer(
            ex, result, lambda e: embeddings_body(e, model=model, base64=call.base64)
        )

    async def _models(self, ex: _Exchange) -> None:
        if self._authenticate(ex) is None:
            await ex.fail(_unauthorized())
            return
        await ex.respond(200, models_body(self.backend.model_list()))

    async def _model(self, ex: _Exchange) -> None:
        if self._authenticate(ex) is None:
            await ex.fail(_unauthorized())
            return
        name = ex.path.removeprefix("/v1/models/")
        owners = dict(self.backend.model_list())
        if name in owners or (name and self.backend.routable(name)):
            await ex.respond(200, encode(model_object(name, owners.get(name, "switchboard"))))
            return
        error = WireError(
            status=404,
            message=f"no connection serves model {name!r}",
            code="model_not_found",
            param="model",
        )
        await ex.fail(error)

    async def _metrics(self, ex: _Exchange) -> None:
        if self._authenticate(ex) is None:
            await ex.fail(_unauthorized())
            return
        text = self.backend.metrics_text().rstrip("\n") + "\n" + self._prometheus()
        await ex.respond(
            200, text.encode(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def _prometheus(self) -> str:
        lines = [
            "# HELP switchboard_http_responses_total Answers of the HTTP face, by status.",
            "# TYPE switchboard_http_responses_total counter",
        ]
        lines += [
            f'switchboard_http_responses_total{{status="{status}"}} {count}'
            for status, count in sorted(self._responses.items())
        ]
        families = (
            ("http_in_flight", "gauge", "API requests being answered.", self._in_flight),
            ("http_connections", "gauge", "Open plain-HTTP connections.", self._connections),
            ("http_disconnects_total", "counter", "Clients that left mid-answer.",
             self._disconnects),
            ("http_slow_closed_total", "counter", "Connections closed: the client did not read.",
             self._slow_closed),
        )  # fmt: skip
        for name, kind, help_text, value in families:
            lines += [
                f"# HELP switchboard_{name} {help_text}",
                f"# TYPE switchboard_{name} {kind}",
                f"switchboard_{name} {value}",
            ]
        return "\n".join(lines) + "\n"

    async def _status_html(self, ex: _Exchange) -> None:
        if self.status_page is None:
            await ex.fail(_not_found(ex.path))
            return
        await ex.respond(
            200, PAGE, content_type="text/html; charset=utf-8", headers=list(PAGE_HEADERS)
        )

    def _status_viewer(self, ex: _Exchange) -> ClientKey | None:
        """The client a status request authenticates as: its header token, else its
        ``token`` query parameter (a browser's EventSource cannot send headers)."""
        client = self.clients.authenticate(ex.token() or query_token(ex.scope))
        if client is not None:
            ex.client = client.name
        return client

    async def _status_json(self, ex: _Exchange) -> None:
        page = self.status_page
        if page is None:
            await ex.fail(_not_found(ex.path))
        elif self._status_viewer(ex) is None:
            await ex.fail(_unauthorized())
        else:
            body = page.current(trio.current_time())
            await ex.respond(200, body, headers=list(PAGE_HEADERS))

    async def _status_events(self, ex: _Exchange) -> None:
        """The status page's event stream, until the viewer leaves or the server closes."""
        page = self.status_page
        if page is None:
            await ex.fail(_not_found(ex.path))
            return
        if self._closing:
            await ex.fail(_shutting_down())
            return
        if self._status_viewer(ex) is None:
            await ex.fail(_unauthorized())
            return
        with page.viewer() as admitted:
            if not admitted:
                busy = WireError(
                    status=503,
                    type="service_unavailable_error",
                    code="too_many_viewers",
                    message=f"{page.max_viewers} status pages are open; try again later",
                    retry_after=5.0,
                )
                await ex.fail(busy)
                return
            await ex.start(200, list(PAGE_HEADERS), "text/event-stream")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, ex, nursery.cancel_scope)
                with contextlib.suppress(_ClientGone):
                    await page.stream(ex.write)
                nursery.cancel_scope.cancel()
        if not ex.gone and not ex.finished:  # the page closed: end the response
            with contextlib.suppress(_ClientGone):
                await ex.write(b"", more=False)

    async def _healthz(self, ex: _Exchange) -> None:
        await ex.respond(200, encode({"status": "alive"}))

    async def _readyz(self, ex: _Exchange) -> None:
        status, body = self.backend.health_report()
        ready = status in ("ok", "degraded") and not self._closing
        await ex.respond(200 if ready else 503, body)

    # -- logging ------------------------------------------------------------------------

    def _log_error(self, ex: _Exchange, error: WireError, failure: Failure | None) -> None:
        """One line per failed request: id, peer, client, path, model, status, kind, connection and
        a short message; never a token, a key or the prompt. Cancellations log at INFO,
        crashes and 5xx of the face itself at ERROR, the rest at WARNING."""
        kind = failure.kind.value if failure is not None else "-"
        if failure is not None and failure.kind is ErrorKind.CANCELLED:
            level = logging.INFO
        elif failure is not None and failure.kind is ErrorKind.CRASHED:
            level = logging.ERROR
        else:
            level = logging.WARNING
        if not log.isEnabledFor(level):
            return
        message = " ".join(error.message.split())
        if len(message) > _LOG_MESSAGE_CHARS:
            message = message[: _LOG_MESSAGE_CHARS - 1] + "…"
        connection = failure.connection if failure is not None and failure.connection else "-"
        log.log(
            level,
            "request %s from %s (client %s) on %s failed: %d %s (model %s, connection %s): %s",
            ex.request_id,
            ex.peer,
            ex.client or "-",
            ex.path,
            error.status,
            kind,
            ex.model or "-",
            connection,
            message,
            extra={
                "request_id": ex.request_id,
                "peer": ex.peer,
                "client": ex.client or None,
                "path": ex.path,
                "status": error.status,
                "error_kind": kind,
                "model": ex.model or None,
                "connection": None if connection == "-" else connection,
            },
        )


def _answered_by(connection: str, model: str) -> list[tuple[bytes, bytes]]:
    """Headers naming who answered (header-safe: non-ASCII names are left out)."""
    out = []
    for name, value in ((b"x-switchboard-connection", connection), (b"x-switchboard-model", model)):
        if value and value.isascii() and value.isprintable():
            out.append((name, value.encode()))
    return out


def _unauthorized() -> WireError:
    return WireError(
        status=401,
        message="missing or invalid token: send Authorization: Bearer <token> "
        "(the api_key of the SDK) with one of the [gateway] tokens",
        code="invalid_api_key",
        anthropic_type="authentication_error",
    )


def _shutting_down() -> WireError:
    return WireError(
        status=503,
        type="service_unavailable_error",
        code="cancelled",
        message="server shutting down",
        retry_after=1.0,
    )


def _not_found(path: str) -> WireError:
    hint = ""
    if not path.startswith("/v1/") and f"/v1{path}" in _ROUTES:
        hint = f"; did you mean /v1{path}? (the SDK's base_url ends with /v1)"
    known = ", ".join(sorted(_ROUTES))
    return WireError(
        status=404,
        type="invalid_request_error",
        code="unknown_url",
        message=f"unknown path {path}{hint}; this server answers {known}",
    )


_ROUTES: Final[dict[str, dict[str, _Handler]]] = {
    "/": {"GET": HttpFace._status_html},
    "/status": {"GET": HttpFace._status_json},
    "/status/events": {"GET": HttpFace._status_events},
    "/v1/chat/completions": {"POST": HttpFace._chat},
    "/v1/messages": {"POST": HttpFace._messages},
    "/v1/embeddings": {"POST": HttpFace._embeddings},
    "/v1/models": {"GET": HttpFace._models},
    "/metrics": {"GET": HttpFace._metrics},
    "/healthz": {"GET": HttpFace._healthz},
    "/readyz": {"GET": HttpFace._readyz},
}
"""Path -> method -> handler (``/v1/models/{id}`` is matched by prefix)."""
