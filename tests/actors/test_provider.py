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

import msgspec
import pytest
import trio
import trio.testing

from actors._breaker import BreakerState
from actors._provider import Connection, ProviderActor
from actors.testing._core import AttemptRecord
from actors.testing._faults import (
    Budget,
    FaultPlan,
    Latency,
    Rule,
    StreamCut,
)
from actors.testing._transport import FakeTransport
from protocol._config import (
    ConnectionConfig,
    MailboxConfig,
    ProviderName,
    RateLimitConfig,
)
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
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


async def test_stream_events_flow_as_they_arrive(autojump_clock: Any) -> None:
    conn, fake = connect(config("openai"), token_interval=1.0)
    seen: list[tuple[float, str]] = []
    with trio.fail_after(60):
        async with serving(conn), conn.stream(chat_request()) as s:
            async for event in s:
                if isinstance(event, TextDelta):
                    seen.append((trio.current_time(), event.text))
    # 12 tokens, one per second: each reaches the caller the moment the fake sends it.
    assert [t for t, _ in seen] == [float(i) for i in range(12)]
    result = s.result
    assert isinstance(result, Completion)
    assert result.time_to_first_token == 0.0
    assert result.text == "".join(text for _, text in seen)
    assert fake.attempts[0].outcome == "completed"


@pytest.mark.parametrize(
    ("provider", "partial"),
    [("openai", (1, 3)), ("anthropic", (1, 3)), ("gemini", (1, 3)), ("ollama", (1, 3))],
)
async def test_stream_cut_fails_typed_with_the_partial_usage(
    provider: ProviderName, partial: tuple[int, int], autojump_clock: Any
) -> None:
    # After the first event the caller gets stream_interrupted - no silent retry that would
    # show the text twice - with the usage spent so far: what the provider reported (Anthropic's
    # message_start says 1 output token, Gemini's per-chunk usageMetadata 3; OpenAI and Ollama
    # nothing), raised to the 3 deltas received, with the input estimated from the prompt
    # ("hi": 1 token) where the provider had not reported it.
    conn, fake = connect(config(provider), FaultPlan.always(StreamCut(after_tokens=3)))
    with trio.fail_after(60):
        async with serving(conn):
            events, result = await stream_all(conn, chat_request())
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.STREAM_INTERRUPTED
    assert result.attempts == 1
    assert not result.retryable
    assert len(fake.attempts) == 1
    assert fake.attempts[0].tokens_emitted == 3
    assert sum(1 for e in events if isinstance(e, TextDelta)) >= 1
    assert tokens(result.usage) == partial
    snap = conn.metrics.snapshot()
    assert (snap.input_tokens, snap.output_tokens) == partial
    wasted = snap.models["m"]
    assert (wasted.wasted_input_tokens, wasted.wasted_output_tokens) == partial


# --------------------------------------------------------------------------- cancellation


async def test_caller_leaving_a_stream_closes_upstream_at_once(autojump_clock: Any) -> None:
    conn, fake = connect(config("anthropic"), token_interval=1.0)
    with trio.fail_after(60):
        async with serving(conn):
            async with conn.stream(chat_request()) as s:
                async for event in s:
                    if isinstance(event, TextDelta):
                        break
            left = trio.current_time()
            # The upstream request is closed the moment the caller leaves the block.
            await trio.sleep(0.5)
            assert fake.attempts[0].outcome == "client_closed"
            assert fake.attempts[0].ended_at == left
            assert fake.attempts[0].tokens_emitted == 1
    # Anthropic's message_start reported usage before the cut: recorded once, as wasted.
    snap = conn.metrics.snapshot()
    assert (snap.input_tokens, snap.output_tokens) == (1, 1)
    assert snap.models["m"].wasted_output_tokens == 1
    assert snap.failures == {"cancelled": 1}
    assert conn.statistics().limiter.in_flight == 0


async def test_cancelled_chat_closes_upstream_and_frees_everything(autojump_clock: Any) -> None:
    conn, fake = connect(
        config("openai", rate_limit=RateLimitConfig(concurrent_requests=1)),
        FaultPlan.first(1, Latency(seconds=10.0)),
    )
    with trio.fail_after(60):
        async with serving(conn):
            with trio.move_on_after(3):
                await conn.chat(chat_request())
            while fake.attempts[0].outcome is None:  # let the actor run; no time passes
                await trio.lowlevel.checkpoint()
            assert fake.attempts[0].outcome == "client_closed"
            assert fake.attempts[0].ended_at == 3.0
            # The concurrency slot and the breaker permit came back: the next one goes now.
            result = await conn.chat(chat_request())
            assert isinstance(result, Completion)
            assert fake.attempts[1].arrived_at == 3.0
    assert conn.breaker.snapshot(trio.current_time()).calls == 1  # the cancelled one: neither
    assert tokens(recorded(conn)) == tokens(reported(fake.attempts))


# --------------------------------------------------------------------------- crash and restart


class Boom(Exception):
    pass


async def test_a_bug_crashes_the_actor_without_hanging_any_caller(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config("openai", rate_limit=RateLimitConfig(requests_per_minute=2))
    plan = FaultPlan(
        rules=(
            Rule(fault=Latency(seconds=1.0), arrivals=(1,)),
            Rule(fault=Latency(seconds=5.0), arrivals=(2,)),
        )
    )
    conn, fake = connect(cfg, plan)
    conn.max_in_flight = 2
    dialect = conn._generation.dialect
    real_parse = dialect.parse_chat
    calls = 0

    def parse_chat(body: bytes) -> Completion | Failure:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Boom("a bug in the decoder")
        return real_parse(body)

    monkeypatch.setattr(dialect, "parse_chat", parse_chat)
    limiter, breaker = conn.limiter, conn.breaker
    results: dict[str, Completion | Failure] = {}

    async def ask(name: str) -> None:
        results[name] = await conn.chat(chat_request(name))

    async def first_incarnation(task_status: trio.TaskStatus[None]) -> None:
        with pytest.RaisesGroup(Boom):
            await ProviderActor(conn).run(task_status=task_status)

    with trio.fail_after(120):
        async with trio.open_nursery() as callers:
            await callers.start(first_incarnation)
            callers.start_soon(ask, "a")
            await trio.testing.wait_all_tasks_blocked()
            callers.start_soon(ask, "c")
            await trio.testing.wait_all_tasks_blocked()
            callers.start_soon(ask, "b")  # queued behind two in flight
            await trio.sleep(2)
            # The crash (at t=1) answered both in-flight callers at once; b is still queued.
            assert set(results) == {"a", "c"}
            for name in "ac":
                failure = results[name]
                assert isinstance(failure, Failure)
                assert failure.kind is ErrorKind.CRASHED
            assert fake.attempts[1].outcome == "client_closed"
            assert fake.attempts[1].ended_at == 1.0
            assert not conn.running
            assert conn.mailbox.statistics().queued == 1
            # The next incarnation serves b, with the same limiter: RPM 2 was spent at t=0,
            # so b waits for the bucket to refill one request (30 s).
            async with serving(conn):
                await trio.sleep(40)
    assert conn.limiter is limiter
    assert conn.breaker is breaker
    assert conn.incarnation == 2
    done = results["b"]
    assert isinstance(done, Completion)
    assert [a.arrived_at for a in fake.attempts] == [0.0, 0.0, 30.0]
    assert conn.statistics().limiter.in_flight == 0


# --------------------------------------------------------------------------- mailbox


async def test_mailbox_full_wait_gives_queue_full_at_the_deadline(autojump_clock: Any) -> None:
    cfg = config("openai", mailbox=MailboxConfig(capacity=1, when_full="wait"))
    conn, fake = connect(cfg, FaultPlan.always(Latency(seconds=20.0)))
    conn.max_in_flight = 1
    results: list[Completion | Failure] = []

    async def ask(timeout: float) -> None:
        results.append(await conn.chat(chat_request(), timeout=timeout))

    with trio.fail_after(120):
        async with serving(conn) as nursery:
            nursery.start_soon(ask, 60.0)  # in flight
            await trio.sleep(0.1)
            nursery.start_soon(ask, 60.0)  # queued
            await trio.sleep(0.1)
            started = trio.current_time()
            full = await conn.chat(chat_request(), timeout=5.0)
            assert trio.current_time() == started + 5.0
    assert isinstance(full, Failure)
    assert full.kind is ErrorKind.QUEUE_FULL
    assert full.retry_after is not None
    assert full.retry_after > 0
    assert len(fake.attempts) == 2
    assert conn.statistics().mailbox.rejected == 1


async def test_mailbox_full_reject_fails_at_once_with_retry_after(autojump_clock: Any) -> None:
    cfg = config("openai", mailbox=MailboxConfig(capacity=1, when_full="reject"))
    conn, fake = connect(cfg, FaultPlan.always(Latency(seconds=20.0)))
    conn.max_in_flight = 1
    with trio.fail_after(120):
        async with serving(conn) as nursery:
            nursery.start_soon(conn.chat, chat_request())
            await trio.sleep(0.1)
            nursery.start_soon(conn.chat, chat_request())
            await trio.sleep(0.1)
            full = await conn.chat(chat_request())
            assert trio.current_time() == pytest.approx(0.2)
            async with conn.stream(chat_request()) as s:
                events = [e async for e in s]
            stats = conn.statistics()
    assert isinstance(full, Failure)
    assert full.kind is ErrorKind.QUEUE_FULL
    assert full.retry_after is not None
    assert full.retry_after > 0
    assert events == []
    streamed = s.result
    assert isinstance(streamed, Failure)
    assert streamed.kind is ErrorKind.QUEUE_FULL
    assert stats.mailbox.rejected == 2
    assert stats.mailbox.queued == 1
    assert stats.mailbox.in_flight == 1
    assert len(fake.attempts) == 2


async def test_expired_requests_are_shed_before_any_attempt(autojump_clock: Any) -> None:
    conn, fake = connect(config("openai"), FaultPlan.always(Latency(seconds=20.0)))
    conn.max_in_flight = 1
    results: list[tuple[float, Completion | Failure]] = []

    async def ask(timeout: float) -> None:
        result = await conn.chat(chat_request(), timeout=timeout)
        results.append((trio.current_time(), result))

    with trio.fail_after(120):
        async with serving(conn) as nursery:
            nursery.start_soon(ask, 60.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, 5.0)  # queued behind a 20 s request
            await trio.testing.wait_all_tasks_blocked()
            async with conn.stream(chat_request(), timeout=7.0) as s:
                events = [e async for e in s]
            assert trio.current_time() == 7.0
    # The queued callers got `deadline` at their deadlines, not when a slot freed; the fake
    # saw only the first request.
    assert len(fake.attempts) == 1
    shed_at, shed = results[0]
    assert shed_at == 5.0
    assert isinstance(shed, Failure)
    assert shed.kind is ErrorKind.DEADLINE
    assert shed.attempts == 0
    assert events == []
    streamed = s.result
    assert isinstance(streamed, Failure)
    assert streamed.kind is ErrorKind.DEADLINE
    assert isinstance(results[1][1], Completion)
    stats = conn.statistics()
    assert stats.mailbox.shed == 2
    assert stats.metrics.failures == {"deadline": 2}
    assert stats.metrics.requests == 3


async def test_actor_sheds_what_expired_in_its_mailbox(autojump_clock: Any) -> None:
    # No actor runs while the deadline passes: the caller sheds its own request; a later
    # incarnation skips it without an attempt.
    conn, fake = connect(config("openai"))
    with trio.fail_after(60):
        result = await conn.chat(chat_request(), timeout=2.0)
        assert trio.current_time() == 2.0
        async with serving(conn):
            await trio.sleep(1)
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.DEADLINE
    assert fake.attempts == []
    assert conn.statistics().mailbox.queued == 0


async def test_control_lane_acts_at_once_with_a_full_mailbox(autojump_clock: Any) -> None:
    cfg = config("openai", mailbox=MailboxConfig(capacity=2, when_full="wait"))
    conn, fake = connect(cfg, FaultPlan.first(1, Latency(seconds=10.0)))
    conn.max_in_flight = 1
    results: list[Completion | Failure] = []

    async def ask() -> None:
        results.append(await conn.chat(chat_request()))

    with trio.fail_after(120):
        async with serving(conn) as nursery:
            for _ in range(3):
                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask)  # waits for room
            await trio.sleep(1)
            stats = conn.statistics()
            assert (stats.mailbox.queued, stats.mailbox.waiting_senders) == (2, 1)
            conn.force_open()
            assert conn.statistics().breaker.state is BreakerState.FORCED_OPEN
            assert trio.current_time() == 1.0
            await trio.sleep(20)
            # The one in flight finished; everything behind it met the forced-open breaker.
            assert [r.kind for r in results if isinstance(r, Failure)] == [
                ErrorKind.CIRCUIT_OPEN
            ] * 3
            conn.force_close()
            assert conn.statistics().breaker.state is BreakerState.CLOSED
            conn.override(msgspec.structs.replace(conn.config, default_model="other"))
            after = await conn.chat(
                ChatRequest(model="", messages=[Message(role="user", content="x")])
            )
    assert isinstance(after, Completion)
    assert len(fake.attempts) == 2
    assert fake.attempts[1].model == "other"
    assert conn.statistics().metrics.breaker_transitions


async def test_statistics_snapshot(autojump_clock: Any) -> None:
    conn, _ = connect(config("gemini"), FaultPlan.server_error_once())
    with trio.fail_after(60):
        async with serving(conn):
            stats = conn.statistics()
            assert stats.running
            assert stats.incarnation == 1
            await conn.chat(chat_request())
            stats = conn.statistics()
    assert stats.name == "c"
    assert stats.provider == "gemini"
    assert stats.mailbox.accepted == 1
    assert stats.mailbox.peak_in_flight == 1
    assert stats.mailbox.in_flight == 0
    assert stats.metrics.requests == 1
    assert stats.metrics.completions == 1
    assert stats.metrics.attempts == 2
    assert stats.metrics.retries == 1
    assert stats.breaker.calls == 2
    assert stats.breaker.failures == 1
    assert stats.limiter.in_flight == 0
    assert not conn.statistics().running
    with pytest.raises(AttributeError):
        stats.name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("provider", DIALECTS)
async def test_embeddings_go_through_the_same_path(
    provider: ProviderName, autojump_clock: Any
) -> None:
    conn, fake = connect(config(provider), FaultPlan.server_error_once())
    with trio.fail_after(60):
        async with serving(conn):
            result = await conn.embed(EmbedRequest(model="m", inputs=["a b", "c"]))
    if provider == "anthropic":
        assert isinstance(result, Failure)
        assert result.kind is ErrorKind.UNSUPPORTED
        assert fake.attempts == []
        return
    assert isinstance(result, Embeddings)
    assert len(result.vectors) == 2
    assert result.attempts == 2
    assert result.connection == "c"
    assert [a.arrived_at for a in fake.attempts] == [0.0, 0.4375]
    assert [a.endpoint for a in fake.attempts] == ["embed", "embed"]
    if provider == "gemini":
        # Gemini's embedContent reports no usage (the fake's log claims the input tokens
        # were reported: a known inaccuracy of its Gemini renderer).
        assert tokens(recorded(conn)) == (0, 0)
    else:
        assert tokens(recorded(conn)) == tokens(reported(fake.attempts))
        assert recorded(conn).input_tokens > 0


async def test_breaker_commands_are_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    conn = Connection(ConnectionConfig(name="c", provider="openai", base_url="http://fake/v1"))
    conn.force_open()
    conn.force_open()
    assert conn.breaker.state.value == "forced_open"
    assert conn.metrics.snapshot().breaker_transitions == {"closed->forced_open": 1}
    conn.force_close()
    conn.force_close()
    assert conn.breaker.state.value == "closed"
    assert conn.metrics.snapshot().breaker_transitions == {
        "closed->forced_open": 1,
        "forced_open->closed": 1,
    }


async def test_a_key_httpx_cannot_send_is_a_config_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from protocol._config import Secret

    config = ConnectionConfig(
        name="c", provider="openai", base_url="http://fake/v1", api_key=Secret("sk-caf\u00e9-xyz")
    )
    transport = FakeTransport()
    conn = Connection(config, transport=transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(ProviderActor(conn).run)
        for _ in range(5):
            result = await conn.chat(
                ChatRequest(model="m", messages=[Message(role="user", content="x")])
            )
            assert isinstance(result, Failure)
            assert result.kind is ErrorKind.CONFIG
            assert "caf" not in result.message
            assert result.attempts == 1
        assert conn.incarnation == 1
        assert conn.running
        assert transport.attempts == []
        assert conn.breaker.state.value == "closed"
        conn.mailbox.close()
