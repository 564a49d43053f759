"""The shared description of what a fake provider does for one request: a `Script`.

The fault-injection kit has two shells - a real HTTP server on loopback (`FakeProvider`) and an
in-memory httpx transport - that must behave identically. So neither decides anything: a
single sans-IO core (`ProviderCore`) looks at the request, the `FaultPlan`, the seeded text
generator and the rate-limit budget, and returns a `Script` - a list of steps. Each shell only
*executes* steps: send the head, send a chunk, pause, reset the connection, hang. How an
attempt ended (completed, reset, the client went away) is reported back to the core, which
keeps the attempt log.

Steps:

- `Head(status, headers)`: the status line and headers. Bodies are always sent with
  ``Transfer-Encoding: chunked`` unless the script has a single `Chunk` after the head, which
  the shells may send with ``Content-Length``.
- `Chunk(data)`: body bytes, flushed at once.
- `Pause(seconds)`: sleep (``trio.sleep``: virtual under ``autojump_clock``).
- `Reset()`: drop the connection abruptly (before the head: the client sees no response).
- `Hang()`: stop sending but keep the connection open until the client goes away.

A script that ends without `Reset`/`Hang` ends the body cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol


class Head(NamedTuple):
    status: int
    headers: list[tuple[str, str]]


class Chunk(NamedTuple):
    data: bytes


class Pause(NamedTuple):
    seconds: float


class Reset(NamedTuple):
    pass


class Hang(NamedTuple):
    pass


Step = Head | Chunk | Pause | Reset | Hang


class Script(NamedTuple):
    """What to do for one attempt: its steps, the index of its record in the attempt log, and
    the name of the fault applied (``"healthy"`` when none)."""

    steps: list[Step]
    attempt: int
    fault: str


Outcome = str
"""How an attempt ended, as the shell saw it: ``"completed"`` (the script ran to its end),
``"reset"`` (the script reset the connection), ``"hung"`` (the script hung and the client
went away), ``"client_closed"`` (the client went away before the script ended)."""


class ScriptSource(Protocol):
    """What a shell needs from the core: a script per request, and a report of how it ended.

    ``now`` is seconds since the provider started (the shell's clock: ``trio.current_time()``
    minus its start time, so it is virtual under ``autojump_clock``); ``wall`` is the
    wall-clock time in epoch seconds (for absolute reset headers).
    """

    def respond(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        wall: float,
    ) -> Script: ...

    def finish(self, attempt: int, *, outcome: Outcome, now: float, bytes_sent: int) -> None:
        """Report how attempt *attempt* (``Script.attempt``) ended, exactly once.
        ``bytes_sent`` counts the body bytes (the data of `Chunk` steps) the shell delivered,
        without HTTP framing; the core derives the tokens the client received from it."""
        ...
