# Why this module exists
# ----------------------
# A fault-injection kit is only convincing if the faults travel over a real socket: a reset
# must be a TCP reset, a hang must be an open connection that never answers, a cut stream must
# be a chunked body that stops without its last chunk. Users point their own HTTP clients (and
# the official SDKs) at it, so it has to be a real HTTP/1.1 server.
#
# Options: (1) a framework server (hypercorn, uvicorn) - heavy, asyncio-first, and it hides the
# very framing we want to break; (2) hand-written HTTP parsing - the classic source of subtle
# bugs; (3) h11, the sans-IO HTTP/1.1 state machine httpx itself is built on, over trio TCP.
# We choose (3): h11 parses requests and frames responses, trio moves bytes, and we keep full
# control over when each byte goes out and how the connection ends.
#
# The server decides nothing about *what* to answer: the sans-IO `ProviderCore` (a
# `ScriptSource`) turns each request into a `Script`, and this shell executes its steps. The
# in-memory httpx transport executes the same scripts, so both shells fail identically.
#
# Theory of operation (one connection)
# ------------------------------------
#
#     READ_REQUEST --request+body--> RUN_SCRIPT --end of script--> READ_REQUEST (keep-alive)
#          |  \--bad HTTP--> send 400, CLOSE       |--Reset----------------> ABORT (RST)
#          \--EOF-------------------> CLOSE        |--Hang: wait for EOF---> CLOSE
#                                                  \--client went away----> CLOSE
#
# While a script runs, a watcher task reads from the socket. The client sends nothing while it
# waits for a response (pipelined bytes are buffered into h11 for the next cycle), so EOF or an
# error on that read means the client went away: the script is cancelled at once and the
# attempt is reported as ``client_closed``, also in the middle of a `Pause`. A `Hang` is just
# "wait until the watcher sees the client go". Every attempt is reported to the core exactly
# once through ``finish`` (synchronous, in a ``finally``: a server shutdown reports it too).
#
# Isolation: each connection runs in its own task; any error on it (bad HTTP, a broken socket)
# closes that connection only. An exception raised by the core itself is a bug in the kit: the
# client gets a 500 naming it, and it is kept in `FakeProvider.internal_errors` so that tests
# (and `check_client`) can fail loudly instead of the server dying under the user's nursery.

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import h11
import trio

from ._script import Chunk, Hang, Head, Pause, Reset, Script, ScriptSource, Step

if TYPE_CHECKING:
    from ._core import AttemptRecord
    from ._faults import Budget, FaultPlan

__all__ = ["FakeProvider", "run_fake_provider"]

_MAX_BODY = 16 * 1024 * 1024
_RECEIVE_SIZE = 65536
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_BASE_PATHS = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta", "ollama": ""}


class _ClientGone(Exception):
    """The client closed or broke the connection."""


class FakeProvider:
    """A fake LLM provider: a real HTTP/1.1 server on loopback that speaks the OpenAI,
    Anthropic, Gemini and Ollama APIs and misbehaves as its `FaultPlan` says.

    Start it inside your nursery; ``start`` returns its root URL::

        fake = FakeProvider(plan=FaultPlan(...), seed=1)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(fake.serve)
            client = openai.OpenAI(base_url=fake.base_url("openai"), api_key="x")

    Arguments (keyword-only): *plan* (``None``: always healthy); *seed* (seeds the generated
    text and the plan's random choices; ``None`` keeps the plan's own ``seed``); *budget* (a
    provider-side `Budget` that really depletes); *host* and *port* (default ``127.0.0.1``
    and an ephemeral port); *core* (any `ScriptSource`; by default a `ProviderCore` built
    from *plan*, *seed*, *budget* and ``**core_options`` such as ``answer_tokens``,
    ``token_interval``, ``context_window``, ``models``).

    One instance serves once; `attempts` is the core's attempt log.
    """

    def __init__(
        self,
        *,
        plan: FaultPlan | None = None,
        seed: int | None = None,
        budget: Budget | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        core: ScriptSource | None = None,
        **core_options: Any,
    ) -> None:
        if core is None:
            from ._core import ProviderCore

            core = ProviderCore(plan=plan, seed=seed, budget=budget, **core_options)
        elif plan is not None or seed is not None or budget is not None or core_options:
            raise TypeError("pass either core= or plan/budget/core options, not both")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        self.core: ScriptSource = core
        self._host = host
        self._port = port
        self._url: str | None = None
        self._start = 0.0
        self._open = 0
        self._in_flight = 0
        self._changed = trio.Event()
        self.internal_errors: list[BaseException] = []
        """Exceptions raised by the core while serving (each answered with a 500). Empty in a
        healthy kit; `check_client` fails when it is not."""

    # ------------------------------------------------------------------ public surface

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:54321``. Raises `RuntimeError` before
        `serve` has started."""
        if self._url is None:
            raise RuntimeError("FakeProvider is not serving yet: await nursery.start(fake.serve)")
        return self._url

    def base_url(self, dialect: str) -> str:
        """The base URL an SDK or a connection config of *dialect* should use: ``{url}/v1`` for
        ``openai`` and ``anthropic``, ``{url}/v1beta`` for ``gemini``, ``{url}`` for
        ``ollama``. Raises `ValueError` for another dialect. (These are the base URLs of
        our dialects and of the OpenAI SDK; the official Anthropic SDK appends ``/v1``
        itself, so give it `url`.)"""
        try:
            suffix = _BASE_PATHS[dialect]
        except KeyError:
            known = ", ".join(sorted(_BASE_PATHS))
            raise ValueError(f"unknown dialect {dialect!r} (expected one of {known})") from None
        return self.url + suffix

    @property
    def attempts(self) -> list[AttemptRecord]:
        """The core's attempt log (`ProviderCore.attempts`): one `AttemptRecord` per request
        received, in arrival order; an attempt still in flight has ``outcome`` ``None``."""
        log: list[AttemptRecord] = getattr(self.core, "attempts")  # noqa: B009 - not in ScriptSource
        return log

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now (for socket-leak checks)."""
        return self._open

    async def wait_no_connections(self) -> None:
        """Return once `open_connections` is 0 (at once if it already is)."""
        while self._open:
            await self._changed.wait()

    async def wait_settled(self) -> None:
        """Return once every attempt received so far has ended and been reported to the core.

        A client may see the end of a response a moment before the server records it, so
        wait for this before reading `attempts`. (An attempt that hangs ends only when its
        client goes away.)"""
        while self._in_flight:
            await self._changed.wait()

    def now(self) -> float:
        """Seconds since the server started, on the trio clock (the core's ``now``)."""
        return trio.current_time() - self._start

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled. With ``nursery.start`` it returns the root URL
        once the socket is listening."""
        if self._url is not None:
            raise RuntimeError("this FakeProvider is already serving (or has served)")
        listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        sockname = listeners[0].socket.getsockname()
        host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self._url = f"http://{host}:{sockname[1]}"
        self._start = trio.current_time()
        async with trio.open_nursery() as nursery:
            task_status.started(self._url)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    # ------------------------------------------------------------------ one connection

    async def _connection(self, stream: trio.SocketStream) -> None:
        self._count(connections=+1)
        try:
            await _Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # this client broke its own connection; nobody else is affected
        except Exception as exc:  # a bug in the kit (e.g. a script h11 cannot frame)
            self.internal_errors.append(exc)
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            finally:
                self._count(connections=-1)

    def _count(self, connections: int = 0, attempts: int = 0) -> None:
        self._open += connections
        self._in_flight += attempts
        self._changed.set()
        self._changed = trio.Event()


class _Connection:
    """Serves the requests of one TCP connection, one at a time (see theory of operation)."""

    def __init__(self, server: FakeProvider, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.client_gone = trio.Event()
        # State of the attempt being served (see `_run`).
        self.script_scope = trio.CancelScope()
        self.sent = 0
        self.outcome = "client_closed"
        self.hanging = False

    async def run(self) -> None:
        while True:
            try:
                received = await self._read_request()
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint, f"bad request: {exc}")
                return
            if received is None:
                return
            request, body = received
            if not await self._respond(request, body):
                return
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # h11 says this connection must close (Connection: close, HTTP/1.0)
            self.h11.start_next_cycle()

    async def _read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body, or ``None`` when the client closed the connection."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    return None
                self.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            # h11.PAUSED cannot happen here (we only read between cycles); nothing else to do.

    async def _send_error(self, status: int, message: str) -> None:
        """Best effort: answer *status* with a plain-text *message*, then the caller closes."""
        payload = message.encode("utf-8", "replace")
        try:
            head = h11.Response(
                status_code=status,
                headers=[
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", str(len(payload))),
                    ("connection", "close"),
                ],
            )
            data = self.h11.send(head) or b""
            data += self.h11.send(h11.Data(data=payload)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return  # h11 cannot frame a response in this state; just close
        await self.stream.send_all(data)

    # ------------------------------------------------------------------ one attempt

    async def _respond(self, request: h11.Request, body: bytes) -> bool:
        """Run the core's script for *request*. True when the connection may be reused."""
        server = self.server
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("ascii", "replace")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            script = server.core.respond(
                method=request.method.decode("ascii", "replace"),
                path=path,
                query=query,
                headers=headers,
                body=body,
                now=server.now(),
                wall=time.time(),
            )
        except Exception as exc:
            server.internal_errors.append(exc)
            await self._send_error(500, f"fake provider internal error: {exc!r}")
            return False
        server._count(attempts=+1)
        try:
            return await self._run(script)
        finally:
            server._count(attempts=-1)

    async def _run(self, script: Script) -> bool:
        """Execute *script* while watching the client; report the attempt exactly once."""
        self.sent = 0
        self.outcome = "client_closed"  # unless the steps get to say otherwise
        self.hanging = False
        try:
            async with trio.open_nursery() as nursery:
                self.script_scope = trio.CancelScope()
                nursery.start_soon(self._watch_client)
                with self.script_scope:
                    try:
                        await self._execute(script.steps)
                    except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
                        self.outcome = "client_closed"
                nursery.cancel_scope.cancel()
        finally:
            self.server.core.finish(
                script.attempt, outcome=self.outcome, now=self.server.now(), bytes_sent=self.sent
            )
        return self.outcome == "completed" and not self.client_gone.is_set()

    async def _execute(self, steps: Sequence[Step]) -> None:
        """Execute *steps*, counting body bytes in ``sent`` and setting ``outcome``."""
        uses_length = _uses_length(steps)
        for step in steps:
            if isinstance(step, Head):
                await self._send_head(step, uses_length, steps)
            elif isinstance(step, Chunk):
                if step.data:
                    await self._send(self.h11.send(h11.Data(data=step.data)))
                    self.sent += len(step.data)
            elif isinstance(step, Pause):
                await trio.sleep(step.seconds)
            elif isinstance(step, Reset):
                self.outcome = "reset"
                self._abort()
                return
            elif isinstance(step, Hang):
                self.hanging = True
                await self.client_gone.wait()
                self.outcome = "hung"
                return
        if self.h11.our_state is h11.SEND_RESPONSE:
            # A script without a head still has to answer something well-formed.
            await self._send_head(Head(204, []), True, ())
        await self._send(self.h11.send(h11.EndOfMessage()))
        self.outcome = "completed"

    async def _send_head(self, head: Head, uses_length: bool, steps: Sequence[Step]) -> None:
        headers = [(k, v) for k, v in head.headers if k.lower() not in _FRAMING_HEADERS]
        if uses_length:
            length = sum(len(s.data) for s in steps if isinstance(s, Chunk))
            headers.append(("content-length", str(length)))
        else:
            headers.append(("transfer-encoding", "chunked"))
        await self._send(self.h11.send(h11.Response(status_code=head.status, headers=headers)))

    async def _send(self, data: bytes | None) -> None:
        if self.client_gone.is_set():
            raise _ClientGone
        if data:
            await self.stream.send_all(data)

    async def _watch_client(self) -> None:
        """Read while a script runs; EOF or a broken socket means the client went away."""
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.client_gone.set()
                if not self.hanging:
                    self.script_scope.cancel()  # a Hang ends by itself and reports "hung"
                return
            self.h11.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle

    def _abort(self) -> None:
        """Close the socket with SO_LINGER 0: the kernel sends RST instead of FIN."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.client_gone.set()


def _uses_length(steps: Sequence[Step]) -> bool:
    """True when the body can go with Content-Length: after the head, exactly one `Chunk`
    (pauses allowed) and the script ends cleanly."""
    chunks = 0
    for step in steps:
        if isinstance(step, (Reset, Hang)):
            return False
        chunks += isinstance(step, Chunk)
    return chunks <= 1


async def run_fake_provider(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    plan: FaultPlan | None = None,
    seed: int | None = None,
    ready: Callable[[str], None] | None = None,
    **core_options: Any,
) -> None:
    """Run a `FakeProvider` on *host*:*port* until cancelled (the ``switchboard
    fake-provider`` command). *ready* is called with the root URL once it listens."""
    fake = FakeProvider(plan=plan, seed=seed, host=host, port=port, **core_options)
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(fake.serve)
        if ready is not None:
            ready(url)
