"""`FakeTransport`: the in-memory twin of `FakeProvider`, an httpx transport that executes the
same fault scripts without sockets.

Problem: tests of retry, breaker, limiter and timeout logic want exact virtual times (a stall
of 30 s must take 30 virtual seconds under ``autojump_clock``, instantly) and no sockets at
all, while behaving like the real server so the two shells are interchangeable.

Choice (httpx's own seam, ``_transports/base.py`` / ``mock.py``): an
``httpx.AsyncBaseTransport`` whose ``handle_async_request`` asks a `ProviderCore` (any
``ScriptSource``) for the script and executes it with trio: `Pause` is ``trio.sleep``, `Hang`
is ``trio.sleep_forever``, `Reset` raises the exception httpx raises for a dropped connection,
`Head` returns an ``httpx.Response`` whose body is an async byte stream yielding each `Chunk`.

Theory of operation (one attempt):

    handle_async_request: steps before Head --Pause--> sleep
                                           --Reset--> finish("reset"), raise ReadError
                                           --Hang---> sleep forever; cancelled: finish("hung")
                                           --cancelled--> finish("client_closed")
                          Head --> Response(stream=body)
    body iteration:       Chunk --> yield (counted as sent) ; Pause --> sleep
                          Reset --> finish("reset"), raise ReadError
                          Hang  --> sleep forever
                          end   --> finish("completed")
    aclose() / cancellation before the end --> finish("hung" if hanging else "client_closed")

Every attempt is reported to the core exactly once.

**httpx timeouts are not applied to custom transports**: ``httpx.Timeout`` is enforced by the
connection pool of the default transport, so a `NoResponse` or a `Stall` here waits forever
unless the client under test enforces its own deadlines (``trio.move_on_after``,
``trio.fail_after``) - which a resilient client must do anyway.

Times: ``now`` is ``trio.current_time()`` minus the transport's start (its construction inside
a trio run, else its first request); ``wall`` is ``wall_start`` (default: ``time.time()`` at
start) plus ``now``, so absolute reset headers move with the virtual clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import trio

from ._core import AttemptRecord, ProviderCore
from ._faults import Budget, FaultPlan
from ._script import Chunk, Hang, Head, Outcome, Pause, Reset, ScriptSource, Step

_FRAMING = frozenset({"content-length", "transfer-encoding"})

RESET_MESSAGE = "socket connection broken: [Errno 104] Connection reset by peer"
"""What httpx (on trio) raises, as `httpx.ReadError`, when `FakeProvider` resets a connection
(SO_LINGER 0, a TCP RST) - before the head or mid-body alike. A peer that closes with a FIN
before the head gives ``RemoteProtocolError("Server disconnected without sending a
response.")`` instead; both are ``httpx.TransportError``s, and a client must handle both."""


class FakeTransport(httpx.AsyncBaseTransport):
    """An httpx transport that answers like a misbehaving LLM provider, in memory.

    Use it with any ``httpx.AsyncClient``::

        transport = FakeTransport(plan=FaultPlan.server_error_once(), seed=1)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            ...
        transport.attempts  # what the provider experienced

    Arguments (keyword-only): *plan*, *seed*, *budget* and ``**core_options`` build a
    `ProviderCore` (see it for the options); or pass a ready *core* (any ``ScriptSource``)
    instead. *wall_start* pins the wall clock (epoch seconds at start) for reproducible
    absolute headers. Must be used inside a trio run.
    """

    def __init__(
        self,
        *,
        plan: FaultPlan | None = None,
        seed: int | None = None,
        budget: Budget | None = None,
        core: ScriptSource | None = None,
        wall_start: float | None = None,
        **core_options: Any,
    ) -> None:
        if core is None:
            core = ProviderCore(plan, seed=seed, budget=budget, **core_options)
        elif plan is not None or seed is not None or budget is not None or core_options:
            raise TypeError("pass either core= or plan/seed/budget/core options, not both")
        self.core: ScriptSource = core
        self._wall_start = wall_start
        self._start: float | None = None
        with contextlib.suppress(RuntimeError):  # outside trio: start at the first request
            self._start = trio.current_time()
        if self._start is not None and self._wall_start is None:
            self._wall_start = time.time()

    @property
    def attempts(self) -> list[AttemptRecord]:
        """The core's attempt log (requires a `ProviderCore`)."""
        if not isinstance(self.core, ProviderCore):
            raise TypeError("attempts needs a ProviderCore")
        return self.core.attempts

    def now(self) -> float:
        """Seconds since the transport started, on trio's clock."""
        current = trio.current_time()
        if self._start is None:
            self._start = current
        return current - self._start

    def wall(self) -> float:
        now = self.now()
        if self._wall_start is None:
            self._wall_start = time.time()
        return self._wall_start + now

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        now = self.now()
        script = self.core.respond(
            method=request.method,
            path=request.url.path,
            query=request.url.query.decode("ascii", "replace"),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            now=now,
            wall=self.wall(),
        )
        attempt = _Attempt(self, script.attempt)
        steps = list(script.steps)
        for position, step in enumerate(steps):
            if isinstance(step, Head):
                rest = steps[position + 1 :]
                return httpx.Response(
                    step.status,
                    headers=_framed(step, rest),
                    stream=_ScriptStream(attempt, rest, request),
                    request=request,
                )
            try:
                if isinstance(step, Pause):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Reset):
                    attempt.finish("reset")
                    raise httpx.ReadError(RESET_MESSAGE, request=request)
                elif isinstance(step, Hang):
                    attempt.hanging = True
                    await trio.sleep_forever()
            except BaseException:
                attempt.finish("hung" if attempt.hanging else "client_closed")
                raise
        # A script without a head: answer 204 like the server shell does.
        attempt.finish("completed")
        return httpx.Response(204, request=request)


class _Attempt:
    """One attempt's report to the core: bytes delivered, and `finish` exactly once."""

    def __init__(self, transport: FakeTransport, index: int) -> None:
        self.transport = transport
        self.index = index
        self.sent = 0
        self.hanging = False
        self.done = False

    def finish(self, outcome: Outcome) -> None:
        if self.done:
            return
        self.done = True
        self.transport.core.finish(
            self.index, outcome=outcome, now=self.transport.now(), bytes_sent=self.sent
        )


def _framed(head: Head, rest: Sequence[Step]) -> list[tuple[str, str]]:
    """The head's headers plus the framing the server shell would add: ``content-length``
    for a single-chunk body that ends cleanly, ``transfer-encoding: chunked`` otherwise."""
    headers = [(k, v) for k, v in head.headers if k.lower() not in _FRAMING]
    chunks = [s for s in rest if isinstance(s, Chunk)]
    if len(chunks) <= 1 and not any(isinstance(s, Reset | Hang) for s in rest):
        headers.append(("content-length", str(sum(len(c.data) for c in chunks))))
    else:
        headers.append(("transfer-encoding", "chunked"))
    return headers


class _ScriptStream(httpx.AsyncByteStream):
    """The body of a scripted response: yields chunks, sleeps on pauses, breaks on resets."""

    def __init__(self, attempt: _Attempt, steps: list[Step], request: httpx.Request) -> None:
        self._attempt = attempt
        self._steps = steps
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt = self._attempt
        try:
            for step in self._steps:
                if isinstance(step, Chunk):
                    if step.data:
                        # Like a socket read: a checkpoint per chunk, so a consumer that stops
                        # (cancels) mid-body is seen as gone rather than drinking the body.
                        await trio.lowlevel.checkpoint()
                        attempt.sent += len(step.data)
                        yield step.data
                elif isinstance(step, Pause):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Reset):
                    attempt.finish("reset")
                    raise httpx.ReadError(RESET_MESSAGE, request=self._request)
                elif isinstance(step, Hang):
                    attempt.hanging = True
                    await trio.sleep_forever()
            attempt.finish("completed")
        finally:
            # Cancelled, or the consumer stopped iterating (aclose / GeneratorExit).
            attempt.finish("hung" if attempt.hanging else "client_closed")

    async def aclose(self) -> None:
        self._attempt.finish("hung" if self._attempt.hanging else "client_closed")
