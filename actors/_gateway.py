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
  The token names the session's client (`actors._client_keys`: ``[gateway] tokens`` are
  unlimited clients, ``[gateway.clients.<name>]`` have their own limits). Each request is
  admitted by its client's limits before it starts (a refusal is its failure frame:
  ``rate_limited`` with ``retry_after``, or ``permission``) and settled with its result when
  it ends. ``gateway.clients`` is shared with any other face of the gateway, so the limits
  hold across them.
- **Limits**: maximum frame size (trio-websocket closes with 1009 above it), maximum
  concurrent requests per socket (excess requests get a ``queue_full`` failure frame),
  handshake timeout (no valid hello in time: 4408). A frame that cannot be decoded gets a
  typed failure frame for its id (or for id ``""``) and never disturbs other requests.
- **One writer per socket, one write per wake-up.** Request tasks and the read loop do not
  write to the socket: they queue encoded frames (no lock, no checkpoint while there is
  room) and the session's writer task takes everything queued each time it wakes up. To a
  client that offered the ``batch`` feature in its hello, those frames go out as one `Batch`
  message (one socket write and one decode on the client for all the events that arrived
  meanwhile: under load that is many events per write); to any other client, one message per
  frame, as before. The per-event cost of a lock, a shielded cancel scope, a WebSocket frame
  and a system call was most of what the gateway cost (``bench/gateway.py``).
- **Backpressure end to end**: at most ``_WRITE_BYTES`` of encoded frames wait per socket; a
  request task that finds the queue full waits, so it stops reading its provider stream,
  which stops reading the provider's socket. A client that has not accepted a message for
  ``slow_client_timeout_s`` is closed with 4429. WebSocket pings every ``ping_interval_s``
  close connections whose peer went silent.
- **A frame is written whole or not at all.** Cancelling a task in the middle of a socket write
  would leave half a WebSocket frame on the wire and corrupt the socket for every other
  request on it. So queueing is cancellable (nothing written yet), only the writer writes,
  and each message is written shielded; a write that stays blocked is ended by the
  session's watchdog, which closes the socket as a slow consumer (4429): the close frame
  queues behind the blocked message, so a client that reads again sees whole frames and then
  the code, and one that never does is cut off after a short grace.
- **Replies to control frames** (pong, rejections, decode errors) are sent by the read loop
  itself, so a client that floods the gateway without reading is slowed (and eventually
  closed as slow), instead of growing one task per frame.
- **One terminal frame per id**: a frame that reuses the id of a running request (or an
  undecodable one whose id is in use) is answered with a failure for id ``""``, never with a
  second terminal frame for the running request.
- **Isolation**: an unexpected error in one session (or in the backend for one request) is
  logged and ends only that socket (1011) or that request (``crashed``), never the server.
- **We own each TCP stream** (our accept loop + ``wrap_server_stream`` rather than
  ``serve_websocket``) and close it when the session ends: trio-websocket leaves the stream
  open when the peer's close or an oversized message ended the WebSocket first.
- **Bounded connections, quiet overload.** At most ``max_connections`` TCP connections are
  open at once; a further one is counted and refused cheaply: at once, without parsing its
  request, it gets an HTTP 503 (so every WebSocket client reports "503, retry later" rather
  than waiting for a handshake that never comes), then end of stream, and its socket is
  closed when the peer hangs up or after ``_REFUSE_GRACE`` (reading what it sent, so the
  close does not reset the connection before the 503 is read). At most ``_MAX_REFUSING``
  such refusals are pending; beyond that a connection is just closed. One warning line at
  most every ``_OVERLOAD_LOG_S`` says connections are being refused.
- **Out of file descriptors, one line, not a traceback per accept.** When ``accept`` fails
  for lack of resources (EMFILE, ENFILE, ENOMEM, ENOBUFS) the loop retries every 0.1 s, as
  ``trio.serve_listeners`` does, but instead of its traceback per retry (tens per second) it
  logs one line at most every ``_OVERLOAD_LOG_S``: what failed, the open-file limit, and
  what to do (raise ``ulimit -n`` or lower ``max_connections``).
- **One log line per failed request** (`_log_failure`): id, peer, model, kind, connection and
  a short message, as text and as ``extra`` fields; never a token, a key or the prompt.
- **Graceful shutdown**: a ``goodbye`` frame, no new requests, running ones finish up to the
  drain time, then sockets close with 1001.

The gateway depends only on a `GatewayBackend` (the runtime implements it), not on
`supervisors`, keeping the package import direction.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Protocol

import msgspec
import trio
import trio_websocket as tw

from protocol._config import GatewayConfig
from protocol._errors import ErrorKind
from protocol._frames import (
    CLOSE_GOING_AWAY,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_VERSION,
    FEATURE_BATCH,
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
    batch_message,
    decode_client_frame,
    encoding_for,
    frame_bytes,
    frame_failure,
    message_of,
)
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
)

from ._client_keys import ClientGrant, ClientKey, ClientKeys

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


class HttpDispatch(Protocol):
    """Another protocol on the gateway's port (the HTTP face): `dispatch` serves a new
    connection itself, or returns the stream to continue as a WebSocket (``None``: done)."""

    async def dispatch(self, stream: trio.SocketStream) -> trio.abc.Stream | None: ...

    async def shutdown(self, drain_s: float) -> None: ...


def _wall_epoch() -> float:
    """The wall-clock time (Unix seconds) at which the trio clock read 0, for calendar budget
    periods (`ClientKeys`)."""
    try:
        return time.time() - trio.current_time()
    except RuntimeError:  # not inside trio.run: the clock is read only inside it anyway
        return time.time()


def _outcome(frame: ServerFrame) -> Completion | Embeddings | Failure | None:
    """The backend's result in a terminal frame, for settling the client's grant."""
    if isinstance(frame, Done | EmbedDone):
        return frame.result
    if isinstance(frame, FailureFrame):
        return frame.failure
    return None


def _peer(stream: trio.SocketStream) -> str:
    try:
        return _address(stream.socket.getpeername())
    except OSError:
        return "?"


def _address(sockaddr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address or trio-websocket
    ``Endpoint``; anything else as ``str``."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host, port = str(sockaddr[0]), sockaddr[1]
    elif hasattr(sockaddr, "address") and hasattr(sockaddr, "port"):
        host, port = str(sockaddr.address), sockaddr.port
    else:
        return str(sockaddr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GatewayStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """``connections``: open TCP connections; ``refused_connections``: connections closed at
    once because ``max_connections`` were open; ``accept_errors``: failed ``accept`` calls
    (out of file descriptors or memory)."""

    sessions: int
    peak_sessions: int
    sessions_total: int
    rejected_auth: int
    requests: int
    in_flight: int
    malformed_frames: int
    slow_closed: int
    connections: int = 0
    refused_connections: int = 0
    accept_errors: int = 0


_CLOSE_GRACE = 2.0
"""Seconds the close handshake may take before the TCP stream is simply closed."""

_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""``accept`` errors that mean the process or system is out of resources (as trio's)."""

_ACCEPT_RETRY_S = 0.1
"""Pause after such an error before accepting again (trio's ``serve_listeners`` value)."""

_OVERLOAD_LOG_S = 10.0
"""At most one overload line (accept errors, refused connections) per this many seconds."""

_REFUSE_GRACE = 1.0
"""Seconds a refused connection may stay open for its peer to read the 503 and hang up."""

_MAX_REFUSING = 64
"""Refused connections pending at once (each holds a file descriptor for up to the grace)."""

_REFUSAL_BODY = b"too many connections: [gateway] max_connections are open; retry later\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)
"""The whole answer to a connection beyond ``max_connections``."""

_LOG_MESSAGE_CHARS = 200
"""A failure's message is cut to this length in the log line."""

_WRITE_BYTES = 8 * 1024
"""Encoded frames a session queues before `_Session.send` waits (the backpressure bound),
and the most frames one `Batch` message holds, in bytes (a larger frame is sent alone)."""


class _Throttle:
    """Rate limit for a repeated log line: `due` says whether to log now and how many
    occurrences since the last line went unlogged. Pure: the caller passes ``now``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def due(self, now: float) -> int | None:
        """Record one occurrence at *now*: the number suppressed since the last line when a
        line is due (the caller logs it), else ``None``."""
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _open_files_limit() -> str:
    try:
        import resource
    except ImportError:  # not on this platform
        return "unknown"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


class _Closed(Exception):
    """The session's socket is gone (or was closed by us)."""


class _Session:
    """One client socket.

    Theory of operation (sending): only `write_loop` (one task per session) writes to the
    socket. `send` encodes a frame and queues it - at once, with no lock and no checkpoint,
    while fewer than ``_WRITE_BYTES`` are queued; else it waits (cancellably: nothing is
    written yet) for the writer to take the queue. The writer, once woken, lets the tasks
    that are ready run (one schedule point), then takes everything queued and writes it in
    order: as `Batch` messages of up to ``_WRITE_BYTES`` when the client offered the
    ``batch`` feature (``batching``), else one message per frame. Each message is written
    shielded from cancellation, with ``sending_since`` set for the duration of the write.

    `watch_writes` (one task per session) sleeps until the current write would be
    ``slow_client_timeout_s`` old; if that write is still the one blocked, it closes the
    session with 4429. Closing marks the session closed at once (every later `send` raises
    `_Closed`); a close for a slow consumer drops what is queued, any other close lets the
    writer write it first. Then the WebSocket close handshake runs; both are bounded by
    ``_CLOSE_GRACE``, after which the TCP stream is closed, which also ends a write that is
    still blocked. When the session is cancelled (the client left, the server stops) the
    watchdog's ``finally`` closes the socket if a write is blocked, since that write itself
    cannot be cancelled; so no write outlives its session by more than the grace.
    """

    def __init__(self, gateway: Gateway, ws: tw.WebSocketConnection, encoding: Encoding) -> None:
        self.gateway = gateway
        self.ws = ws
        self.encoding = encoding
        self.scopes: dict[str, trio.CancelScope] = {}
        self.sending_since: float | None = None
        self.welcomed = False
        self.batching = False
        """The client offered `FEATURE_BATCH` in its hello."""
        self.client: ClientKey | None = None
        """Who authenticated on this socket (set before the welcome)."""
        self.closed = False
        self._queue: list[bytes] = []
        self._queued = 0  # bytes in `_queue`
        self._writer_running = False
        self._writer_parked = False
        self._writing = False  # the writer holds frames taken from the queue
        self._drop = False  # closing for a slow consumer: write nothing more
        self._wake = trio.lowlevel.ParkingLot()  # the writer waits here for frames
        self._room = trio.lowlevel.ParkingLot()  # senders wait here for room in the queue
        self._idle = trio.lowlevel.ParkingLot()  # a flushing `close` waits for the writer
        self._close_started = False
        self._close_done = trio.Event()
        self.name = _address(ws.remote)

    def greet(self, hello: Hello) -> None:
        """Take the features the client offered in *hello*."""
        self.batching = FEATURE_BATCH in hello.features

    async def send(self, frame: ServerFrame) -> None:
        """Queue one frame for the writer (see the class docstring); waits while the queue
        is full. Raises `_Closed` when the session is (or gets) closed."""
        if self.closed:
            raise _Closed
        data = frame_bytes(frame, self.encoding)
        while self._queued >= _WRITE_BYTES:
            await self._room.park()
            if self.closed:
                raise _Closed
        self._queue.append(data)
        self._queued += len(data)
        if self._writer_parked:
            self._writer_parked = False
            self._wake.unpark()

    async def write_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write what `send` queued, in order, until the session is closed and its queue
        written (or dropped); ends at once when the socket is gone. Start it with
        ``nursery.start``: from then on a flushing `close` waits for it."""
        self._writer_running = True
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._idle.unpark_all()
                    if self.closed:
                        return
                    self._writer_parked = True
                    try:
                        await self._wake.park()
                    finally:
                        self._writer_parked = False
                    continue
                # One schedule point before taking the queue: the tasks that are ready run
                # first, and what they queue (the next events of the streams, often of this
                # one) goes in the same write.
                await trio.lowlevel.checkpoint()
                frames, self._queue, self._queued = self._queue, [], 0
                self._room.unpark_all()
                self._writing = True
                try:
                    for message in self._messages(frames):
                        if self._drop:
                            return
                        # Cancelled (the session ends) between two messages: stop here. Not
                        # later, in a shielded write the watchdog no longer watches.
                        await trio.lowlevel.checkpoint_if_cancelled()
                        self.sending_since = trio.current_time()
                        try:
                            # No deadline here (a timer per write costs on the hot path): a
                            # blocked write is ended by `watch_writes`, which outlives it.
                            with trio.CancelScope(shield=True):
                                await self.ws.send_message(message)
                        finally:
                            self.sending_since = None
                finally:
                    self._writing = False
        except tw.ConnectionClosed:
            self._mark_closed()
        finally:
            self._writer_running = False
            self._idle.unpark_all()

    def _messages(self, frames: list[bytes]) -> Iterator[str | bytes]:
        """The WebSocket messages that carry *frames*, made as they are written: one per
        frame, or `Batch` messages of up to ``_WRITE_BYTES`` (a lone frame is sent as
        itself)."""
        encoding = self.encoding
        if not self.batching or len(frames) == 1:
            for frame in frames:
                yield message_of(frame, encoding)
            return
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > _WRITE_BYTES:
                yield self._batch(batch)
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        yield self._batch(batch)

    def _batch(self, frames: list[bytes]) -> str | bytes:
        if len(frames) == 1:
            return message_of(frames[0], self.encoding)
        return batch_message(frames, self.encoding)

    def _mark_closed(self) -> None:
        """No more frames: later `send` calls raise `_Closed`; waiting ones wake to raise it
        and the writer wakes to write what is queued and end."""
        self.closed = True
        self._room.unpark_all()
        self._wake.unpark_all()

    async def watch_writes(self) -> None:
        """Close the session with 4429 when one write stays blocked for the slow-client
        timeout (see the class docstring)."""
        timeout = self.timeout
        try:
            while not self.closed:
                since = self.sending_since
                now = trio.current_time()
                if since is None:
                    await trio.sleep(timeout)
                elif now - since < timeout:
                    await trio.sleep(since + timeout - now)
                else:
                    self.gateway._slow_closed += 1
                    log.warning("closing %s: it did not read for %.1fs", self.name, timeout)
                    why = f"client did not read for {timeout:g}s"
                    await self.close(CLOSE_SLOW_CONSUMER, why, flush=False)
                    return
        finally:
            if self.sending_since is not None:
                # Cancelled (the session or the server is stopping) while a write is blocked:
                # the task doing it cannot be cancelled mid-frame, so close the socket, which
                # ends the write within the close grace and lets the session end.
                await self.close(CLOSE_GOING_AWAY, "server stopping", flush=False)

    @property
    def timeout(self) -> float:
        return self.gateway.config.slow_client_timeout_s

    async def close(
        self, code: int, reason: str, *, grace: float = _CLOSE_GRACE, flush: bool = True
    ) -> None:
        """Close the socket with *code*, after the frames queued so far are written (unless
        not *flush*: a slow consumer's are dropped). Bounded by *grace* seconds even for a
        peer that does not read, and shielded. Only the first call closes; later ones wait
        for it to end (the caller may otherwise stop the WebSocket's reader task while the
        first still waits for the peer's close reply, which then could never arrive)."""
        if self._close_started:
            await self._close_done.wait()
            return
        self._close_started = True
        if not flush:
            self._drop = True
            self._queue, self._queued = [], 0
        self._mark_closed()
        try:
            await self._close(code, reason, grace, flush)
        finally:
            self._close_done.set()

    async def _close(self, code: int, reason: str, grace: float, flush: bool) -> None:
        # When the handshake does not finish in time (a peer that does not read), cancelling
        # `aclose` closes the TCP stream, which also ends a write still blocked on it.
        with trio.CancelScope(shield=True), trio.move_on_after(grace):
            while flush and self._writer_running and (self._queue or self._writing):
                await self._idle.park()  # the writer writes what is queued, then ends
            try:
                await self.ws.aclose(code, reason)
            except Exception:  # the socket may already be broken
                log.debug("close of %s failed", self.name, exc_info=True)


class Gateway:
    """A trio-websocket server in front of a `GatewayBackend`.

    ``await nursery.start(gateway.serve)`` listens (port 0 picks a free port) and returns the
    gateway; ``gateway.url`` tells where. ``await gateway.shutdown()`` drains and stops.
    ``gateway.clients`` (built from the config unless *clients* is given) authenticates and
    admits every request, at this face and any other that shares it.
    """

    def __init__(
        self, backend: GatewayBackend, config: GatewayConfig, *, clients: ClientKeys | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.clients = clients if clients is not None else ClientKeys(config, epoch=_wall_epoch())
        self.http: HttpDispatch | None = None
        """Plain HTTP on the same port (`actors._http_face.HttpFace`), when set."""
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
        self._connections = 0
        self._refused_connections = 0
        self._accept_errors = 0
        self._refusing_now = 0
        self._accept_throttle = _Throttle(_OVERLOAD_LOG_S)
        self._refuse_throttle = _Throttle(_OVERLOAD_LOG_S)

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
            connections=self._connections,
            refused_connections=self._refused_connections,
            accept_errors=self._accept_errors,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or `shutdown`."""
        cfg = self.config
        with trio.CancelScope() as scope:
            self._server_scope = scope
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                log.info("gateway listening on %s", self.url)
                task_status.started(self)

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.SocketStream], nursery: trio.Nursery
    ) -> None:
        """Accept connections until cancelled: each gets a `_connection` task, unless
        ``max_connections`` are open (then it is counted and refused: `_refuse`). Out of file
        descriptors or memory, retry every ``_ACCEPT_RETRY_S`` and say so in one line at
        most every ``_OVERLOAD_LOG_S`` (`_overloaded`). Other errors end the server."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self._accept_errors += 1
                    self._overloaded(exc.errno)
                    await trio.sleep(_ACCEPT_RETRY_S)
                    continue
                if self._connections >= self.config.max_connections:
                    self._refused_connections += 1
                    self._refusing()
                    if self._refusing_now < _MAX_REFUSING:
                        self._refusing_now += 1
                        nursery.start_soon(self._refuse, stream)
                    else:
                        await trio.aclose_forcefully(stream)
                    continue
                self._connections += 1  # here, not in the task: the count is exact at once
                nursery.start_soon(self._connection, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Answer a connection beyond ``max_connections`` with a 503 (see the module
        docstring), without parsing its request, and close it."""
        try:
            with trio.move_on_after(_REFUSE_GRACE):
                await stream.send_all(_REFUSAL)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass  # discard the request until the peer hangs up
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone already: nothing to tell it
        finally:
            self._refusing_now -= 1
            await trio.aclose_forcefully(stream)

    def _overloaded(self, code: int) -> None:
        suppressed = self._accept_throttle.due(trio.current_time())
        if suppressed is None:
            return
        log.error(
            "cannot accept connections: %s (%s) with %d connection(s) open; raise the "
            "open-file limit (ulimit -n, now %s) or lower [gateway] max_connections (now %d)"
            "; retrying every %gs%s",
            errno.errorcode.get(code, str(code)),
            os.strerror(code),
            self._connections,
            _open_files_limit(),
            self.config.max_connections,
            _ACCEPT_RETRY_S,
            f" ({suppressed} more failed accept(s) since the last report)" if suppressed else "",
            extra={"error": errno.errorcode.get(code, str(code)), "connections": self._connections},
        )

    def _refusing(self) -> None:
        suppressed = self._refuse_throttle.due(trio.current_time())
        if suppressed is None:
            return
        log.warning(
            "refusing connections: %d open, the [gateway] max_connections limit (%d refused "
            "so far); raise max_connections (and ulimit -n) if these clients are legitimate",
            self._connections,
            self._refused_connections,
            extra={"connections": self._connections, "refused": self._refused_connections},
        )

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One TCP connection (counted by the accept loop): the WebSocket handshake (bounded
        by the handshake timeout), the session, and - always - the TCP stream closed at the
        end and the count decremented. (We own the stream rather than use
        ``serve_websocket``: trio-websocket leaves it open when the peer's close or an
        oversized message ended the WebSocket first.)"""
        try:
            async with trio.open_nursery() as nursery:
                request: tw.WebSocketRequest | None = None
                ws_stream: trio.abc.Stream | None = stream
                if self.http is not None:  # serves plain HTTP; hands back a WebSocket upgrade
                    ws_stream = await self.http.dispatch(stream)
                with trio.move_on_after(self.config.handshake_timeout_s):
                    if ws_stream is not None:
                        request = await tw.wrap_server_stream(
                            nursery, ws_stream, max_message_size=self.config.max_frame_bytes
                        )
                try:
                    if request is not None:
                        await self._handle(request)
                finally:
                    nursery.cancel_scope.cancel()  # the WebSocket's reader task
        except Exception:  # a bug (ours or the library's) ends this connection only
            log.exception("connection from %s failed", _peer(stream))
        finally:
            self._connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def shutdown(self, drain_s: float = 10.0) -> None:
        """Tell clients goodbye, refuse new requests, let running ones finish for up to
        *drain_s* seconds, then cancel what is left (each gets a ``cancelled`` failure frame),
        close every socket (1001) and stop listening."""
        self._closing = True
        goodbye = Goodbye(reason="server shutting down", drain_s=drain_s)
        async with trio.open_nursery() as nursery:
            if self.http is not None:
                nursery.start_soon(self.http.shutdown, drain_s)
            for session in list(self._sessions):
                if session.welcomed:
                    nursery.start_soon(self._reply_quietly, session, goodbye)
        if self._in_flight:
            with trio.move_on_after(drain_s):
                await self._drained.wait()
        if self._in_flight:
            for session in list(self._sessions):
                for scope in session.scopes.values():
                    scope.cancel()
            with trio.move_on_after(_CLOSE_GRACE):  # let them send their terminal frames
                await self._drained.wait()
        async with trio.open_nursery() as nursery:
            for session in list(self._sessions):
                nursery.start_soon(session.close, CLOSE_GOING_AWAY, "server shutting down")
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
        code, reason, grace = 1000, "bye", _CLOSE_GRACE
        try:
            await self._session(session, header_token)
        except _Closed:
            pass
        except Exception:  # a bug must end this socket only, never the server
            log.exception("session %s failed", session.name)
            code, reason = 1011, "internal error"
        finally:
            self._sessions.discard(session)
            if trio.current_effective_deadline() == -math.inf:
                # The server is being stopped: the WebSocket's reader task is cancelled too,
                # so no close reply could be read - send the close frame and go.
                code, reason, grace = CLOSE_GOING_AWAY, "server stopping", 0.1
            await session.close(code, reason, grace=grace)

    async def _session(self, session: _Session, header_token: str | None) -> None:
        cfg = self.config
        ws = session.ws
        client = self.clients.authenticate(header_token)
        if client is None:
            with trio.move_on_after(cfg.handshake_timeout_s) as scope:
                try:
                    message = await ws.get_message()
                except tw.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                await session.close(CLOSE_HANDSHAKE_TIMEOUT, "no hello in time")
                return
            try:
                first: ClientFrame | None = decode_client_frame(message)
            except FrameError:
                first = None
            client = self.clients.authenticate(first.token) if isinstance(first, Hello) else None
            if not isinstance(first, Hello) or client is None:
                self._rejected += 1
                await session.close(CLOSE_UNAUTHORIZED, "unauthorized")
                return
            if not await self._version_ok(session, first):
                return
        session.client = client
        welcome = Welcome(
            max_frame_bytes=cfg.max_frame_bytes, max_concurrent=cfg.max_concurrent_per_client
        )
        await session.send(welcome)
        session.welcomed = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pinger, session, nursery)
            nursery.start_soon(session.watch_writes)
            await nursery.start(session.write_loop)  # writes the welcome first
            try:
                await self._read_loop(session, nursery)
            finally:
                nursery.cancel_scope.cancel()

    async def _version_ok(self, session: _Session, hello: Hello) -> bool:
        """Whether *hello* speaks our version (its features are then the session's); if not,
        the session is closed with 4426."""
        if hello.version == PROTOCOL_VERSION:
            session.greet(hello)
            return True
        reason = f"unsupported protocol version {hello.version}; this server speaks 1"
        await session.close(CLOSE_UNSUPPORTED_VERSION, reason)
        return False

    async def _pinger(self, session: _Session, nursery: trio.Nursery) -> None:
        """Every ``ping_interval_s``, a WebSocket ping; no pong within another interval closes
        the socket (1011) - unless our own write is blocked, which is the watchdog's case
        (4429). The ping runs in its own task so that the timeout never cancels a write."""
        interval = self.config.ping_interval_s
        if not math.isfinite(interval):
            return
        while not session.closed:
            await trio.sleep(interval)
            answered = trio.Event()
            nursery.start_soon(self._ping_once, session, answered)
            while not answered.is_set():
                with trio.move_on_after(interval):
                    await answered.wait()
                if not answered.is_set() and session.sending_since is None:
                    await session.close(1011, f"no pong within {interval:g}s")
                    return

    async def _ping_once(self, session: _Session, answered: trio.Event) -> None:
        try:
            await session.ws.ping()
        except (tw.ConnectionClosed, ValueError):
            pass
        finally:
            answered.set()

    async def _read_loop(self, session: _Session, nursery: trio.Nursery) -> None:
        """Read and dispatch frames until the socket closes. Replies to control frames are
        sent from here (see the module docstring: no task per frame)."""
        try:
            while True:
                try:
                    message = await session.ws.get_message()
                except tw.ConnectionClosed:
                    return
                try:
                    frame = decode_client_frame(message)
                except FrameError as exc:
                    self._malformed += 1
                    rid = exc.id if exc.id not in session.scopes else ""
                    await session.send(frame_failure(ErrorKind.BAD_REQUEST, str(exc), id=rid))
                    continue
                if isinstance(frame, ChatCall | EmbedCall):
                    reject = self._start_request(session, nursery, frame)
                    if reject is not None:
                        self._log_failure(session, frame, reject.failure)
                        await session.send(reject)
                elif isinstance(frame, Cancel):
                    scope = session.scopes.get(frame.id)
                    if scope is not None:
                        scope.cancel()
                elif isinstance(frame, Ping):
                    await session.send(Pong(nonce=frame.nonce))
                elif isinstance(frame, StatusCall):
                    await session.send(self._status(frame))
                elif isinstance(frame, Hello) and not await self._version_ok(session, frame):
                    return
                # Any other late or repeated hello is harmless: ignored.
        except _Closed:
            return

    def _status(self, frame: StatusCall) -> ServerFrame:
        try:
            status, rows = self.backend.status_report()
        except Exception as exc:
            log.exception("status report failed")
            return frame_failure(ErrorKind.CRASHED, f"status report failed: {exc}", id=frame.id)
        return StatusReply(id=frame.id, status=status, connections=rows)

    async def _reply_quietly(self, session: _Session, frame: ServerFrame) -> None:
        with suppress(_Closed):
            await session.send(frame)

    def _start_request(
        self, session: _Session, nursery: trio.Nursery, frame: ChatCall | EmbedCall
    ) -> FailureFrame | None:
        """Start the request task, or return the failure frame that refuses it."""
        rid = frame.id
        if rid in session.scopes:
            # Never a second terminal frame for the running request: answer on id "".
            message = f"request id {rid!r} is already in use by a running request"
            return frame_failure(ErrorKind.BAD_REQUEST, message, id="")
        if self._closing:
            return frame_failure(ErrorKind.CANCELLED, "server shutting down", id=rid)
        limit = self.config.max_concurrent_per_client
        if len(session.scopes) >= limit:
            return FailureFrame(
                id=rid,
                failure=Failure.of(
                    ErrorKind.QUEUE_FULL,
                    f"at most {limit} concurrent requests per connection; wait for one to finish",
                    request_id=rid,
                    retry_after=1.0,
                ),
            )
        assert session.client is not None  # set before the welcome
        grant = self.clients.admit(session.client, frame.request, trio.current_time())
        if isinstance(grant, Failure):
            failure = msgspec.structs.replace(grant, request_id=frame.request.request_id or rid)
            return FailureFrame(id=rid, failure=failure)
        self._requests += 1
        self._in_flight += 1
        scope = trio.CancelScope()
        session.scopes[rid] = scope
        nursery.start_soon(self._run_request, session, frame, scope, grant)
        return None

    async def _run_request(
        self,
        session: _Session,
        frame: ChatCall | EmbedCall,
        scope: trio.CancelScope,
        grant: ClientGrant,
    ) -> None:
        rid = frame.id
        request = frame.request
        if not request.request_id:
            request = msgspec.structs.replace(request, request_id=rid)
        terminal: ServerFrame | None = None
        outcome: Completion | Embeddings | Failure | None = None  # what the backend answered
        crash: Exception | None = None
        try:
            with scope:
                await session.send(Accepted(id=rid))
                try:
                    terminal = await self._call(session, rid, frame, request)
                    outcome = _outcome(terminal)
                except _Closed:
                    raise
                except Exception as exc:  # a backend bug ends this request only
                    crash = exc  # logged with its traceback below
                    terminal = frame_failure(ErrorKind.CRASHED, f"internal error: {exc}", id=rid)
            if scope.cancelled_caught:
                why = "server shutting down" if self._closing else "cancelled by the client"
                terminal = frame_failure(ErrorKind.CANCELLED, why, id=rid)
            if isinstance(terminal, FailureFrame):
                self._log_failure(session, frame, terminal.failure, crash)
            if terminal is not None:
                await session.send(terminal)
        except _Closed:
            pass
        finally:
            self.clients.settle(grant, outcome, trio.current_time())
            session.scopes.pop(rid, None)
            self._in_flight -= 1
            if self._closing and not self._in_flight:
                self._drained.set()

    def _log_failure(
        self,
        session: _Session,
        frame: ChatCall | EmbedCall,
        failure: Failure,
        crash: Exception | None = None,
    ) -> None:
        """Log one line for a request that ended in (or was refused with) *failure*: its id,
        the peer, the model, the kind, the connection that failed and the failure's message
        (what the client was sent, on one line, cut short), also as ``extra`` fields. Never
        the request's content, a token or a key. ``cancelled`` logs at INFO, ``crashed`` at
        ERROR with the traceback of *crash*, anything else at WARNING."""
        kind = failure.kind
        if kind is ErrorKind.CRASHED:
            level = logging.ERROR
        elif kind is ErrorKind.CANCELLED:
            level = logging.INFO
        else:
            level = logging.WARNING
        if not log.isEnabledFor(level):
            return
        message = " ".join(failure.message.split())
        if len(message) > _LOG_MESSAGE_CHARS:
            message = message[: _LOG_MESSAGE_CHARS - 1] + "…"
        request_id = frame.request.request_id or frame.id
        model = failure.model or frame.request.model
        client = session.client.name if session.client is not None else None
        log.log(
            level,
            "request %s from %s (client %s) failed: %s (model %s, connection %s): %s",
            request_id,
            session.name,
            client,
            kind.value,
            model,
            failure.connection or "-",
            message,
            exc_info=crash,
            extra={
                "request_id": request_id,
                "peer": session.name,
                "client": client,
                "model": model,
                "error_kind": kind.value,
                "connection": failure.connection or None,
                "status": failure.status,
            },
        )

    async def _call(
        self,
        session: _Session,
        rid: str,
        frame: ChatCall | EmbedCall,
        request: ChatRequest | EmbedRequest,
    ) -> ServerFrame:
        if isinstance(frame, EmbedCall):
            assert isinstance(request, EmbedRequest)
            result = await self.backend.embed_request(request)
            if isinstance(result, Embeddings):
                return EmbedDone(id=rid, result=result)
            return FailureFrame(id=rid, failure=result)
        assert isinstance(request, ChatRequest)
        if frame.stream:
            return await self._stream(session, rid, request)
        chat = await self.backend.chat_request(request)
        if isinstance(chat, Completion):
            return Done(id=rid, result=chat)
        return FailureFrame(id=rid, failure=chat)

    async def _stream(self, session: _Session, rid: str, request: ChatRequest) -> ServerFrame:
        async with self.backend.stream_request(request) as handle:
            async for event in handle:
                await session.send(EventFrame(id=rid, event=event))
            result = await handle.wait()
        if isinstance(result, Completion):
            return Done(id=rid, result=result)
        return FailureFrame(id=rid, failure=result)
