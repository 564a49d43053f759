"""The Python client of the WebSocket gateway: the runtime's API, remotely.

    async with Client.connect("ws://127.0.0.1:8765", token="...") as client:
        completion = await client.chat(request)
        async with client.stream(request) as s:
            async for event in s: ...
        s.result

One socket carries many requests: a reader task routes frames by request id to per-request
bounded channels (a slow consumer of one stream slows the socket, as it should: that is the
backpressure the gateway relies on). Leaving a stream's block early sends a ``cancel`` frame.

The client offers the ``batch`` feature, so the gateway sends the frames it has ready as one
message: one WebSocket message and one decode for many events. The reader hands each item to
its request without a scheduling round trip when the request's channel has room, and a
stream's consumer takes what is buffered the same way; either waits only when it must (a
full channel, an empty one), which keeps the backpressure.

Errors say what happened and what to do: a refused handshake or a 4401 close becomes
`GatewayError` naming the token problem; a socket that drops ends every pending request with a
``connection`` `Failure` (so each request still ends exactly once) and later calls raise
`GatewayError` saying the connection is closed - open a new `Client` to reconnect. After a
``goodbye`` frame (the gateway drains) running requests go on, new ones raise `GatewayError`.

trio-websocket's exceptions are translated in one place, `translate_error`, and only for
what the connection itself raises: an exception from the caller's own code inside the
``async with`` block (a ``trio.TooSlowError`` of its own ``fail_after``, say) propagates
unchanged, not wrapped in an exception group.
"""

from __future__ import annotations

import itertools
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import NamedTuple

import trio
import trio_websocket as tw

from protocol._errors import ErrorKind, RequestFailed, SwitchboardError
from protocol._frames import (
    CLOSE_UNAUTHORIZED,
    FEATURE_BATCH,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Accepted,
    Batch,
    BatchItem,
    Cancel,
    ChatCall,
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
    StatusCall,
    StatusReply,
    Welcome,
    decode_server_frame,
    encode_frame,
)
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    StreamEvent,
)

_CLOSE_HINTS = {
    CLOSE_UNAUTHORIZED: "the gateway refused the token: pass --token or set SWITCHBOARD_TOKEN "
    "to a token from the gateway's config (switchboard serve prints it)",
    4408: "the gateway did not receive a hello in time",
    4426: "the gateway speaks another protocol version: upgrade the client or the server",
    4429: "the gateway closed the connection because the client did not read its frames",
    1001: "the gateway is shutting down",
    1009: "a frame was larger than the gateway accepts",
}


class GatewayError(SwitchboardError):
    """The gateway connection failed or is closed. ``code`` is the WebSocket close code."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _describe_close(code: int | None, reason: str | None) -> str:
    hint = _CLOSE_HINTS.get(code or 0, "")
    text = f"gateway connection closed (code {code}{': ' + reason if reason else ''})"
    return f"{text}; {hint}" if hint else text


def _code_reason(exc: tw.ConnectionClosed) -> tuple[int | None, str | None]:
    reason = exc.reason
    return (None, None) if reason is None else (reason.code, reason.reason)


_START_ADVICE = "is the gateway running there? start it with `switchboard serve`, or pass --url"


def translate_error(exc: BaseException, url: str) -> GatewayError | None:
    """The `GatewayError` for an exception trio-websocket (or the socket under it) raised
    while connecting to *url*, or ``None`` when *exc* is not one of those."""
    if isinstance(exc, tw.ConnectionClosed):
        code, reason = _code_reason(exc)
        return GatewayError(_describe_close(code, reason), code=code)
    if isinstance(exc, tw.ConnectionRejected):
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        detail = f": {body}" if body else ""
        return GatewayError(
            f"the server at {url} refused the WebSocket upgrade with HTTP "
            f"{exc.status_code}{detail}; check the URL, or retry later if it is shutting down"
        )
    if isinstance(exc, tw.ConnectionTimeout | trio.TooSlowError):
        return GatewayError(f"timed out connecting to the gateway at {url}; {_START_ADVICE}")
    if isinstance(exc, tw.DisconnectionTimeout):
        return GatewayError(f"the gateway at {url} did not finish closing the connection in time")
    if isinstance(exc, tw.HandshakeError | OSError):
        cause = exc.__cause__ if isinstance(exc, tw.HandshakeError) else exc
        detail = f" ({cause})" if cause is not None and str(cause) else ""
        return GatewayError(f"could not connect to the gateway at {url}{detail}; {_START_ADVICE}")
    if isinstance(exc, FrameError):
        return GatewayError(f"the gateway at {url} sent an unreadable frame: {exc}")
    return None


def _translated(exc: Exception, url: str) -> Exception:
    return translate_error(exc, url) or exc


class _Target(NamedTuple):
    host: str
    port: int
    resource: str
    tls: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (80, 443) else f"{host}:{self.port}"

    async def open(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        if self.tls:
            context = ssl.create_default_context()
            return await trio.open_ssl_over_tcp_stream(
                self.host, self.port, ssl_context=context, https_compatible=True
            )
        return await trio.open_tcp_stream(self.host, self.port)


def _parse_url(url: str) -> _Target:
    """Host, port, resource and TLS of a ``ws://`` or ``wss://`` URL; `GatewayError` for
    anything else."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise GatewayError(f"not a gateway URL: {url!r}; expected ws://host:port")
    tls = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, port or (443 if tls else 80), resource, tls)


_Item = StreamEvent | Completion | Embeddings | Failure | StatusReply | Pong


class ClientStream:
    """One streamed request: iterate events, then read ``result``."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[_Item], lost: Callable[[], Failure]
    ) -> None:
        self._receive = receive
        self._lost = lost
        self._result: Completion | Failure | None = None

    def __aiter__(self) -> ClientStream:
        return self

    async def __anext__(self) -> StreamEvent:
        # A plain iterator, not an async generator: breaking out of ``async for`` leaves
        # nothing to finalize.
        receive = self._receive
        while self._result is None:
            try:
                try:
                    item = receive.receive_nowait()  # buffered: no scheduling round trip
                except trio.WouldBlock:
                    item = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                # The channel ended without a terminal item: the connection was lost.
                self._result = self._lost()
                break
            if isinstance(item, Completion | Failure):
                self._result = item
                break
            if not isinstance(item, Embeddings | StatusReply | Pong):
                return item
        raise StopAsyncIteration

    @property
    def result(self) -> Completion | Failure:
        """The terminal result; valid once the events are exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not ended yet")
        return self._result


class Client:
    """A connection to a switchboard gateway. Use `Client.connect`."""

    def __init__(self, ws: tw.WebSocketConnection, encoding: Encoding, welcome: Welcome) -> None:
        self._ws = ws
        self._encoding = encoding
        self.welcome = welcome
        self._pending: dict[str, trio.MemorySendChannel[_Item]] = {}
        self._ids = itertools.count(1)
        self._send_lock = trio.Lock()
        self._closed: str | None = None
        self._close_code: int | None = None
        self._goodbye: str | None = None

    @property
    def closed(self) -> bool:
        """True once the socket is closed (every later call raises `GatewayError`)."""
        return self._closed is not None

    @property
    def draining(self) -> bool:
        """True once the gateway said goodbye: running requests go on, new ones are refused."""
        return self._goodbye is not None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        encoding: Encoding = "json",
        connect_timeout: float = 10.0,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> AsyncIterator[Client]:
        """Connect to the gateway at *url* (``ws://host:port`` or ``wss://...``),
        authenticate with *token*, and yield a `Client`. Raises `GatewayError` with advice
        when that fails; exceptions raised by the code inside the block propagate unchanged.

        The client owns its TCP stream and closes it on the way out (trio-websocket leaves
        it open when the server closed the WebSocket first)."""
        target = _parse_url(url)
        subprotocol = SUBPROTOCOL_MSGPACK if encoding == "msgpack" else SUBPROTOCOL_JSON
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        try:
            with trio.fail_after(connect_timeout):
                stream = await target.open()
        except (OSError, trio.TooSlowError) as exc:
            raise _translated(exc, url) from None
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(connect_timeout):
                    ws = await tw.wrap_client_stream(
                        nursery,
                        stream,
                        target.host_header,
                        target.resource,
                        subprotocols=[subprotocol],
                        extra_headers=headers,
                        max_message_size=max_frame_bytes,
                    )
                    hello = Hello(token=token, client="python", features=[FEATURE_BATCH])
                    await ws.send_message(encode_frame(hello, encoding))
                    first = decode_server_frame(await ws.get_message())
                if not isinstance(first, Welcome):
                    raise GatewayError(f"expected a welcome frame, got {type(first).__name__}")
                client = cls(ws, encoding, first)
                nursery.start_soon(client._reader)
                try:
                    yield client
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    if not isinstance(body_error, trio.Cancelled):
                        # The close handshake (nothing when already closed). When cancelled,
                        # our reader task is gone too and no reply could be read: skip it.
                        with trio.CancelScope(shield=True), trio.move_on_after(connect_timeout):
                            await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            only: BaseException = group.exceptions[0]
            if only is body_error or not isinstance(only, Exception):
                raise only from None
            raise _translated(only, url) from None
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # -- plumbing -----------------------------------------------------------------------

    async def _send(self, frame: ChatCall | EmbedCall | Cancel | Ping | StatusCall) -> None:
        if self._closed is not None:
            raise GatewayError(self._closed, code=self._close_code)
        if self._goodbye is not None and isinstance(frame, ChatCall | EmbedCall | StatusCall):
            raise GatewayError(self._goodbye)
        async with self._send_lock:
            try:
                await self._ws.send_message(encode_frame(frame, self._encoding))
            except tw.ConnectionClosed as exc:
                self._fail_all(*_code_reason(exc))
                raise GatewayError(self._closed or "closed", code=self._close_code) from None

    def _lost(self, rid: str) -> Failure:
        text = self._closed or "the gateway connection closed"
        return Failure.of(ErrorKind.CONNECTION, text, request_id=rid)

    def _fail_all(self, code: int | None, reason: str | None) -> None:
        if self._closed is None:
            self._closed = _describe_close(code, reason)
            self._close_code = code
        for rid, channel in list(self._pending.items()):
            failure = self._lost(rid)
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.send_nowait(failure)
            channel.close()
        self._pending.clear()

    async def _reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                try:
                    frame = decode_server_frame(message)
                except FrameError:
                    continue
                if isinstance(frame, Batch):
                    for one in frame.frames:
                        await self._dispatch(one)
                else:
                    await self._dispatch(frame)
        except tw.ConnectionClosed as exc:
            self._fail_all(*_code_reason(exc))

    async def _dispatch(self, frame: BatchItem) -> None:
        item: _Item
        if isinstance(frame, EventFrame):
            rid, item, terminal = frame.id, frame.event, False
        elif isinstance(frame, Done | EmbedDone):
            rid, item, terminal = frame.id, frame.result, True
        elif isinstance(frame, FailureFrame):
            rid, item, terminal = frame.id, frame.failure, True
        elif isinstance(frame, StatusReply):
            rid, item, terminal = frame.id, frame, True
        elif isinstance(frame, Pong):
            rid, item, terminal = f"ping:{frame.nonce}", frame, True
        elif isinstance(frame, Goodbye):
            self._goodbye = (
                f"the gateway is shutting down ({frame.reason}): it takes no new requests; "
                "connect again later or to another gateway"
            )
            return
        else:  # Welcome, Accepted: nothing to route
            assert isinstance(frame, Welcome | Accepted)
            return
        channel = self._pending.pop(rid, None) if terminal else self._pending.get(rid)
        if channel is None:
            return
        try:
            try:
                channel.send_nowait(item)  # room: no scheduling round trip
            except trio.WouldBlock:
                await channel.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._pending.pop(rid, None)
            return
        if terminal:
            channel.close()

    async def _cancel_quietly(self, rid: str) -> None:
        """Forget request *rid* and tell the gateway to cancel it (best effort, even while
        the caller is being cancelled)."""
        self._pending.pop(rid, None)
        with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(GatewayError):
            await self._send(Cancel(id=rid))

    def _open(self, rid: str, buffer: int = 16) -> trio.MemoryReceiveChannel[_Item]:
        if rid in self._pending:
            raise ValueError(f"request id {rid!r} is already in use on this client")
        send, receive = trio.open_memory_channel[_Item](buffer)
        self._pending[rid] = send
        return receive

    def _new_id(self, request: ChatRequest | EmbedRequest) -> str:
        return request.request_id or f"r{next(self._ids)}"

    # -- API ----------------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[ClientStream]:
        """Stream *request* through the gateway. Leaving the block before the stream ended
        cancels the request upstream."""
        rid = self._new_id(request)
        receive = self._open(rid)
        handle = ClientStream(receive, lambda: self._lost(rid))
        try:
            await self._send(ChatCall(id=rid, request=request, stream=True))
            with receive:
                yield handle
        finally:
            if handle._result is None:
                if rid in self._pending:
                    await self._cancel_quietly(rid)
                handle._result = Failure.of(
                    ErrorKind.CANCELLED, "the caller left the stream", request_id=rid
                )

    async def _one(self, rid: str, frame: ChatCall | EmbedCall | StatusCall | Ping) -> _Item:
        receive = self._open(rid)
        try:
            await self._send(frame)
            with receive:
                async for item in receive:
                    return item
        except BaseException:
            if rid in self._pending:
                if isinstance(frame, ChatCall | EmbedCall):
                    await self._cancel_quietly(rid)
                self._pending.pop(rid, None)
            raise
        message = self._closed or "the gateway connection closed"
        raise GatewayError(message, code=self._close_code)

    async def chat(self, request: ChatRequest) -> Completion:
        """Run *request* (not streamed) and return its completion; raises `RequestFailed`."""
        rid = self._new_id(request)
        item = await self._one(rid, ChatCall(id=rid, request=request, stream=False))
        if isinstance(item, Failure):
            raise RequestFailed(item)
        assert isinstance(item, Completion)
        return item

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Compute embeddings; raises `RequestFailed`."""
        rid = self._new_id(request)
        item = await self._one(rid, EmbedCall(id=rid, request=request))
        if isinstance(item, Failure):
            raise RequestFailed(item)
        assert isinstance(item, Embeddings)
        return item

    async def status(self) -> StatusReply:
        """The runtime's connections, breakers, queues, tokens and cost."""
        rid = f"status:{next(self._ids)}"
        item = await self._one(rid, StatusCall(id=rid))
        assert isinstance(item, StatusReply)
        return item

    async def ping(self) -> float:
        """Round-trip time of an application-level ping, in seconds."""
        nonce = str(next(self._ids))
        start = trio.current_time()
        await self._one(f"ping:{nonce}", Ping(nonce=nonce))
        return trio.current_time() - start
