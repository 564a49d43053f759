"""The Python client of the WebSocket gateway: the runtime's API, remotely.

    async with Client.connect("ws://127.0.0.1:8765", token="...") as client:
        completion = await client.chat(request)
        async with client.stream(request) as s:
            async for event in s: ...
        s.result

One socket carries many requests: a reader task routes frames by request id to per-request
bounded channels (a slow consumer of one stream slows the socket, as it should: that is the
backpressure the gateway relies on). Leaving a stream's block early sends a ``cancel`` frame.

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import trio
import trio_websocket as tw

from protocol._errors import ErrorKind, RequestFailed, SwitchboardError
from protocol._frames import (
    CLOSE_UNAUTHORIZED,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Accepted,
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
    ServerFrame,
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


_Item = StreamEvent | Completion | Embeddings | Failure | StatusReply | Pong


class ClientStream:
    """One streamed request: iterate events, then read ``result``."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[_Item], lost: Callable[[], Failure]
    ) -> None:
        self._receive = receive
        self._lost = lost
        self._result: Completion | Failure | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        async for item in self._receive:
            if isinstance(item, Completion | Failure):
                self._result = item
                return
            if isinstance(item, Embeddings | StatusReply | Pong):
                continue
            yield item
        # The channel ended without a terminal item: the connection was lost.
        self._result = self._lost()

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
        """Connect to the gateway at *url* (``ws://host:port``), authenticate with *token*,
        and yield a `Client`. Raises `GatewayError` with advice when that fails; exceptions
        raised by the code inside the block propagate unchanged."""
        subprotocol = SUBPROTOCOL_MSGPACK if encoding == "msgpack" else SUBPROTOCOL_JSON
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        body_error: BaseException | None = None
        try:
            async with tw.open_websocket_url(
                url,
                subprotocols=[subprotocol],
                extra_headers=headers,
                connect_timeout=connect_timeout,
                disconnect_timeout=connect_timeout,
                max_message_size=max_frame_bytes,
            ) as ws:
                with trio.fail_after(connect_timeout):
                    hello = Hello(token=token, client="python")
                    await ws.send_message(encode_frame(hello, encoding))
                    first = decode_server_frame(await ws.get_message())
                if not isinstance(first, Welcome):
                    raise GatewayError(f"expected a welcome frame, got {type(first).__name__}")
                client = cls(ws, encoding, first)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client._reader)
                        try:
                            yield client
                        except BaseException as exc:
                            body_error = exc
                            raise
                        finally:
                            nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:  # the reader never raises: unwrap
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
        except GatewayError:
            raise
        except Exception as exc:
            if exc is body_error:
                raise
            if body_error is None and isinstance(exc, tw.DisconnectionTimeout):
                return  # the block's work is done; only the closing handshake was slow
            error = translate_error(exc, url)
            if error is None:
                raise
            raise error from None

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
                await self._dispatch(frame)
        except tw.ConnectionClosed as exc:
            self._fail_all(*_code_reason(exc))

    async def _dispatch(self, frame: ServerFrame) -> None:
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
            if handle._result is None and rid in self._pending:
                await self._cancel_quietly(rid)

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
