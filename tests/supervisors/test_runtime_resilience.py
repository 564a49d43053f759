"""The runtime under trouble, in exact virtual time (autojump clock, in-memory fakes):
a flapping primary with a fallback, a crashed provider actor, and graceful shutdown.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio
from trio.testing import MockClock

from actors.testing._faults import FaultPlan, Latency, NoResponse, Rule
from actors.testing._transport import FakeTransport
from protocol._config_load import loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import ChatRequest, Message
from supervisors._runtime import Runtime, open_runtime


def ask(model: str, **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content="hi")], **fields)


async def outcome(rt: Runtime, request: ChatRequest) -> tuple[str, float]:
    """``(connection or failure kind, time)`` of one request."""
    try:
        done = await rt.chat(request)
    except RequestFailed as exc:
        return exc.failure.kind.value, trio.current_time()
    return done.connection, trio.current_time()


class Transitions(logging.Handler):
    """Collects breaker transitions logged by connections, with the trio time they happened."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        to_state = getattr(record, "breaker_to", None)
        if to_state is not None:
            self.seen.append(
                (trio.current_time(), record.connection, record.breaker_from, to_state)  # type: ignore[attr-defined]
            )


FLAPPING = """
[connections.primary]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-primary"
default_model = "gpt-4o"
retry = { max_attempts = 2, initial_delay_ms = 500, jitter = 0.0 }
breaker = { window_size = 4, minimum_calls = 2, open_s = 10 }

[connections.fallback]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "sk-fallback"
default_model = "claude-sonnet"

[routes.smart]
targets = [{ connection = "primary" }, { connection = "fallback" }]
"""


async def test_flapping_primary_fails_over_then_traffic_returns_after_recovery(
    autojump_clock: MockClock,
) -> None:
    primary = FakeTransport(plan=FaultPlan.flapping(60.0, status=503))
    fallback = FakeTransport()
    log = logging.getLogger("switchboard.provider")
    transitions = Transitions()
    log.addHandler(transitions)
    old_level = log.level
    log.setLevel(logging.INFO)
    served: list[tuple[int, float, str, float]] = []
    try:
        async with open_runtime(
            loads_config(FLAPPING),
            transports={"primary": primary, "fallback": fallback},
            rng=random.Random(0),
        ) as rt:
            for i in range(20):
                sent = 4.0 * i
                await trio.sleep_until(sent)
                who, at = await outcome(rt, ask("smart"))
                served.append((i, sent, who, at))
            final = rt.health()
            metrics = rt.metrics()
    finally:
        log.removeHandler(transitions)
        log.setLevel(old_level)

    # t=0: two 503s (0.5 s backoff) open the breaker; the request fails over at 0.5.
    # t=12, 24, 36, 48: the breaker lets a probe through; it fails (the primary is still
    # down) and the breaker re-opens for 10 s again (open_s = 10 is already the default
    # max_open_s, so it does not grow); since the breaker now refuses, the connection gives
    # up at once instead of sleeping through a backoff: that request fails over at the same
    # instant. The primary recovers at t=60; the probe at t=60 succeeds: traffic is back at
    # once (never more than 10 s, the cap, plus the 4 s between requests, after recovery).
    expected = []
    for i in range(20):
        sent = 4.0 * i
        if sent == 0.0:
            expected.append((i, sent, "fallback", sent + 0.5))
        elif sent < 60.0:
            expected.append((i, sent, "fallback", sent))
        else:
            expected.append((i, sent, "primary", sent))
    assert served == expected
    back = next(at for _, _, who, at in served if who == "primary")
    assert 60.0 <= back <= 60.0 + 15.0
    probes = [12.0, 24.0, 36.0, 48.0]
    assert transitions.seen == [
        (0.5, "primary", "closed", "open"),
        *[
            step
            for t in probes
            for step in ((t, "primary", "open", "half_open"), (t, "primary", "half_open", "open"))
        ],
        (60.0, "primary", "open", "half_open"),
        (60.0, "primary", "half_open", "closed"),
    ]
    # The provider saw exactly the probes: 2 attempts at t=0, one at each probe, then traffic.
    traffic = [60.0, 64.0, 68.0, 72.0, 76.0]
    assert [a.arrived_at for a in primary.attempts] == [0.0, 0.5, *probes, *traffic]
    assert [a.status for a in primary.attempts] == [503] * 6 + [200] * 5
    assert len(fallback.attempts) == 15
    assert [h.breaker for h in final.connections] == ["closed", "closed"]
    snap = metrics.connections["primary"]
    assert snap.breaker_transitions == {
        "closed->open": 1,
        "open->half_open": 5,
        "half_open->open": 4,
        "half_open->closed": 1,
    }
    assert metrics.failovers == 5
    assert (metrics.requests, metrics.completions, metrics.failures) == (20, 20, {})


CRASHY = """
[connections.solo]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-solo"
default_model = "m"
rate_limit = { concurrent_requests = 2 }
"""


class CrashOnce:
    """Wraps a dialect; building the *nth* chat request raises a plain exception (a bug)."""

    def __init__(self, inner: Any, nth: int) -> None:
        self.inner = inner
        self.nth = nth
        self.calls = 0

    def chat_request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("a bug in the dialect")
        return self.inner.chat_request(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_crashed_actor_is_restarted_and_serves_the_queued_requests(
    autojump_clock: MockClock,
) -> None:
    transport = FakeTransport(plan=FaultPlan.always(Latency(seconds=5.0)))
    results: dict[str, tuple[str, float]] = {}

    async def call(tag: str) -> None:
        results[tag] = await outcome(rt, ask("m", request_id=tag))

    async with open_runtime(loads_config(CRASHY), transports={"solo": transport}) as rt:
        conn = rt.connection("solo")
        conn._generation.dialect = CrashOnce(conn._generation.dialect, nth=2)
        assert rt.health().connections[0].incarnation == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "in-flight")
            await trio.sleep(1.0)
            # The second request crashes the actor while the first is in flight; the
            # third and fourth are still queued (two slots) and survive the crash.
            for tag in ("crasher", "queued-1", "queued-2"):
                nursery.start_soon(call, tag)
                await trio.lowlevel.checkpoint()
        health = rt.health()
        stats = rt.supervisor.statistics()

    assert results == {
        "in-flight": ("crashed", 1.0),
        "crasher": ("crashed", 1.0),
        "queued-1": ("solo", 6.0),
        "queued-2": ("solo", 6.0),
    }
    (row,) = health.connections
    assert (row.incarnation, row.running, health.status) == (2, True, "ok")
    assert stats.total_restarts == 1
    assert [(c.id, c.restart_count) for c in stats.children] == [("solo", 1)]
    # The in-flight request's HTTP exchange was closed when its incarnation died.
    assert [a.outcome for a in transport.attempts] == ["client_closed", "completed", "completed"]


SHUTDOWN = """
[runtime]
shutdown_timeout_s = 5

[connections.slow]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-slow"
default_model = "m"
rate_limit = { concurrent_requests = 2 }
"""


async def test_leaving_the_block_drains_then_cancels_and_everyone_gets_one_result(
    autojump_clock: MockClock,
) -> None:
    plan = FaultPlan(
        sequence=(Latency(seconds=3.0), NoResponse(), Latency(seconds=10.0)),
    )
    transport = FakeTransport(plan=plan)
    results: dict[str, list[tuple[str, float]]] = {}

    async def call(rt: Runtime, tag: str) -> None:
        results.setdefault(tag, []).append(await outcome(rt, ask("m", request_id=tag)))

    async with trio.open_nursery() as callers:
        async with open_runtime(loads_config(SHUTDOWN), transports={"slow": transport}) as rt:
            for tag in ("fast", "hung", "late", "never-started"):
                callers.start_soon(call, rt, tag)
                await trio.lowlevel.checkpoint()
            await trio.sleep(1.0)
        # The block is left at t=1: the mailbox closes; "fast" finishes at 3, which frees a
        # slot for "late"; at 1 + 5 = 6 what is left is cancelled. "never-started" was
        # still queued and is failed, not forgotten.
        assert trio.current_time() == 6.0
        callers.start_soon(call, rt, "after")

    assert results == {
        "fast": [("slow", 3.0)],
        "hung": [("cancelled", 6.0)],
        "late": [("cancelled", 6.0)],
        "never-started": [("cancelled", 6.0)],
        "after": [("cancelled", 6.0)],
    }
    assert [a.outcome for a in transport.attempts] == ["completed", "hung", "client_closed"]
    assert [a.arrived_at for a in transport.attempts] == [0.0, 0.0, 3.0]


async def test_shutdown_without_stragglers_is_immediate(autojump_clock: MockClock) -> None:
    async with open_runtime(loads_config(SHUTDOWN), transports={"slow": FakeTransport()}) as rt:
        assert (await rt.chat(ask("m"))).connection == "slow"
    assert trio.current_time() == 0.0
    assert rt.health().connections[0].running is False
    assert rt.metrics().failures == {}


async def test_queued_requests_of_a_removed_connection_are_failed_not_forgotten(
    autojump_clock: MockClock,
) -> None:
    config = loads_config(SHUTDOWN.replace("shutdown_timeout_s = 5", "shutdown_timeout_s = 2"))
    transport = FakeTransport(plan=FaultPlan(rules=(Rule(fault=NoResponse()),)))
    got: list[tuple[str, float]] = []

    async def call() -> None:
        got.append(await outcome(rt, ask("m")))

    async with open_runtime(config, transports={"slow": transport}) as rt:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
            await trio.sleep(1.0)
            await rt.remove_connection("slow")
            assert trio.current_time() == 3.0
        assert rt.connections_for("m") == []
        assert sorted(got) == [("cancelled", 3.0)] * 3
        after = await outcome(rt, ask("m"))
        assert after == (ErrorKind.NOT_FOUND.value, 3.0)
