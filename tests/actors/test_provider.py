"""The provider connection actor end to end, against the in-memory fake provider.

Every test runs under ``autojump_clock`` with `FakeTransport` (no sockets), so times are
exact: the fake's attempt log tells when each attempt arrived and how it ended, and
``conn.metrics.snapshot()`` tells what the actor recorded. The fault matrix lives in
``test_provider_faults.py``; the overload test in ``test_overload.py``. The helpers at the top
of this module are shared with both.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors._provider import Connection, ProviderActor
from actors.testing._core import AttemptRecord
from actors.testing._faults import (
    Budget,
    FaultPlan,
)
from actors.testing._transport import FakeTransport
from protocol._config import (
    ConnectionConfig,
    ProviderName,
)
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Finished,
    Message,
    StreamEvent,
    TextDelta,
    Usage,
)

# --------------------------------------------------------------------------- shared helpers

BASE_URLS: dict[ProviderName, str] = {
    "openai": "http://fake/v1",
    "anthropic": "http://fake/v1",
    "gemini": "http://fake/v1beta",
    "ollama": "http://fake",
}
DIALECTS: tuple[ProviderName, ...] = ("openai", "anthropic", "gemini", "ollama")
EPOCH = 1_700_000_000.0
"""The wall clock at virtual time 0, shared by the fake and the connection (whole seconds, so
HTTP-date headers round to exact delays)."""


class FixedRandom(random.Random):
    """A `random.Random` whose ``random()`` is always *value*: exact jitter."""

    def __init__(self, value: float = 0.5) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def config(provider: ProviderName = "openai", **fields: Any) -> ConnectionConfig:
    """A connection config for the fake provider; *fields* override `ConnectionConfig`."""
    base: dict[str, Any] = {
        "name": "c",
        "provider": provider,
        "base_url": BASE_URLS[provider],
        "default_model": "m",
    }
    base.update(fields)
    return ConnectionConfig(**base)


def connect(
    cfg: ConnectionConfig,
    plan: FaultPlan | None = None,
    *,
    rng: random.Random | None = None,
    budget: Budget | None = None,
    **core: Any,
) -> tuple[Connection, FakeTransport]:
    """A `Connection` wired to a fresh `FakeTransport` whose wall clock is `EPOCH` at t=0."""
    transport = FakeTransport(plan=plan, seed=1, budget=budget, wall_start=EPOCH, **core)
    conn = Connection(
        cfg,
        transport=transport,
        rng=rng if rng is not None else FixedRandom(),
        wall_clock=lambda: EPOCH + trio.current_time(),
    )
    return conn, transport


@asynccontextmanager
async def serving(conn: Connection) -> AsyncIterator[trio.Nursery]:
    """Run an incarnation of *conn* for the block; on exit close the mailbox so the actor
    drains and returns (a leaked task would keep the nursery, and the test, from ending)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(ProviderActor(conn).run)
        yield nursery
        conn.mailbox.close()


def chat_request(text: str = "hi", **fields: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=text)], **fields)


async def stream_all(
    conn: Connection, request: ChatRequest, **options: Any
) -> tuple[list[StreamEvent], Completion | Failure]:
    """Stream *request* to the end: its events and its terminal result."""
    async with conn.stream(request, **options) as s:
        events = [e async for e in s]
    return events, s.result


def arrivals(transport: FakeTransport) -> list[float]:
    return [a.arrived_at for a in transport.attempts]


def reported(attempts: Sequence[AttemptRecord]) -> Usage:
    """The sum of the usage the fake actually delivered (the bytes carrying it were sent)."""
    total = Usage()
    for a in attempts:
        if a.usage_reported is not None:
            total = total + a.usage_reported
    return total


def recorded(conn: Connection) -> Usage:
    """What the connection's metrics recorded, over every model."""
    snap = conn.metrics.snapshot()
    return Usage(input_tokens=snap.input_tokens, output_tokens=snap.output_tokens)


def tokens(usage: Usage | None) -> tuple[int, int]:
    return (0, 0) if usage is None else (usage.input_tokens, usage.output_tokens)


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("provider", DIALECTS)
async def test_chat_and_stream_healthy(provider: ProviderName, autojump_clock: Any) -> None:
    conn, fake = connect(config(provider))
    with trio.fail_after(30):
        async with serving(conn):
            result = await conn.chat(chat_request())
            events, streamed = await stream_all(conn, chat_request())
    assert isinstance(result, Completion)
    assert isinstance(streamed, Completion)
    assert result.connection == "c"
    assert result.model == "m"
    assert result.attempts == 1
    assert streamed.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed.text
    assert isinstance(events[-1], Finished)
    assert [a.outcome for a in fake.attempts] == ["completed", "completed"]
    assert [a.stream for a in fake.attempts] == [False, True]
    # Usage recorded once per attempt, attributed to this connection's model.
    assert tokens(recorded(conn)) == tokens(reported(fake.attempts))
    assert tokens(result.usage) == tokens(fake.attempts[0].usage_reported)
    assert set(conn.metrics.snapshot().models) == {"m"}
    assert conn.metrics.snapshot().completions == 2
    assert trio.current_time() == 0.0
