"""The router over real `Connection`s and `ProviderActor`s, against in-memory fake providers
(`FakeTransport`), under the autojump clock: every time asserted is exact virtual time.

What it shows: each strategy's order; open breakers and parked limiters are skipped; the
all-unavailable failure carries the earliest retry-after; failover kinds and the kinds that
are never failed over; the silent-target rule; context-length fallback; the three mid-stream
policies (and continuation falling back to restart); hedging (fixed and learned) with the
loser cancelled and its usage recorded as wasted; exact accounting after failover.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

from actors._provider import Connection, ProviderActor
from actors._router import Router
from actors.testing._faults import (
    ContentFiltered,
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Latency,
    NoResponse,
    PrefillRejected,
    RateLimited,
    Rule,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)
from actors.testing._transport import FakeTransport
from protocol._config_load import config_from_dict
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Message,
    Restart,
    StreamEvent,
    TextDelta,
)

BASE = {"openai": "http://fake/v1", "anthropic": "http://fake/v1"}


def conn_table(provider: str = "openai", **overrides: Any) -> dict[str, Any]:
    """A connection table as in a TOML file: one attempt, no jitter, unless overridden."""
    table: dict[str, Any] = {
        "provider": provider,
        "base_url": BASE[provider],
        "api_key": "sk-test",
        "retry": {"max_attempts": 1, "jitter": 0.0},
    }
    table.update(overrides)
    return table


class Rig:
    def __init__(self, router: Router, transports: dict[str, FakeTransport]) -> None:
        self.router = router
        self.transports = transports

    def conn(self, name: str) -> Connection:
        return self.router.connections[name]

    def faults(self, name: str) -> list[str]:
        return [a.fault for a in self.transports[name].attempts]

    def outcomes(self, name: str) -> list[str | None]:
        return [a.outcome for a in self.transports[name].attempts]


@asynccontextmanager
async def rig(
    connections: Mapping[str, dict[str, Any]],
    routes: Mapping[str, dict[str, Any]] | None = None,
    plans: Mapping[str, FaultPlan] | None = None,
    core: Mapping[str, dict[str, Any]] | None = None,
) -> AsyncIterator[Rig]:
    """Connections (TOML-like tables) with actors running, each behind a `FakeTransport`
    with its plan from *plans* and `ProviderCore` options from *core*; a seeded router."""
    config = config_from_dict({"connections": dict(connections), "routes": dict(routes or {})})
    plans = plans or {}
    transports = {
        name: FakeTransport(plan=plans.get(name), seed=i, **(core or {}).get(name, {}))
        for i, name in enumerate(config.connections)
    }
    conns = {
        name: Connection(cfg, transport=transports[name], rng=random.Random(i))
        for i, (name, cfg) in enumerate(config.connections.items())
    }
    router = Router(conns, config.routes, rng=random.Random(0))
    async with trio.open_nursery() as nursery:
        for conn in conns.values():
            await nursery.start(ProviderActor(conn).run)
        yield Rig(router, transports)
        for conn in conns.values():
            conn.mailbox.close()


def ask(model: str = "smart", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content="hello")], **fields)


def always(fault: Fault, **selectors: Any) -> FaultPlan:
    return FaultPlan.always(fault, **selectors)


async def chat(router: Router, request: ChatRequest) -> Completion:
    result = await router.chat(request)
    assert isinstance(result, Completion), result
    return result


async def collect(
    router: Router, request: ChatRequest
) -> tuple[list[StreamEvent], Completion | Failure]:
    events: list[StreamEvent] = []
    async with router.stream(request) as s:
        async for event in s:
            events.append(event)
    return events, s.result


def texts(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


TWO = {"a": conn_table(default_model="m-a"), "b": conn_table(default_model="m-b")}
SMART = {"smart": {"targets": [{"connection": "a"}, {"connection": "b"}]}}


# --------------------------------------------------------------------------- resolution


async def test_targets_resolve_through_routes_aliases_patterns_defaults_and_pins(
    autojump_clock: MockClock,
) -> None:
    conns = {
        "oa": conn_table(default_model="gpt-4o", models={"fast": "gpt-4o-mini"}),
        "an": conn_table("anthropic", default_model="claude-x", serves=["claude-*"]),
    }
    routes = {"smart": {"targets": [{"connection": "an"}, {"connection": "oa", "model": "fast"}]}}
    async with rig(conns, routes) as r:
        router = r.router
        assert [(t.connection, t.model) for t in router.targets_for("smart")] == [
            ("an", "claude-x"),
            ("oa", "gpt-4o-mini"),
        ]
        assert router.connections_for("fast") == ["oa"]
        assert [t.model for t in router.targets_for("fast")] == ["gpt-4o-mini"]
        assert router.connections_for("claude-3-opus") == ["an"]
        assert router.connections_for("gpt-4o") == ["oa"]
        assert [(t.connection, t.model) for t in router.targets_for("oa/o1")] == [("oa", "o1")]
        assert router.connections_for("llama") == []
        result = await router.chat(ask("llama"))
        assert isinstance(result, Failure)
        assert result.kind is ErrorKind.NOT_FOUND
        assert "llama" in result.message
        assert "smart" in result.message


# --------------------------------------------------------------------------- strategies


async def test_priority_failover_is_the_default_order(autojump_clock: MockClock) -> None:
    conns = {
        "a": conn_table(default_model="m", priority=2),
        "b": conn_table(default_model="m", priority=0),
        "c": conn_table(default_model="m", priority=1),
    }
    plans = {"b": always(ServerError(status=500))}
    async with rig(conns, plans=plans) as r:
        done = await chat(r.router, ask("m"))
        assert (done.connection, done.attempts) == ("c", 2)
        assert r.faults("b") == ["server_error"]
        assert r.faults("a") == []
        assert r.router.failovers == 1
        assert trio.current_time() == 0.0


async def test_weighted_spreads_by_weight_reproducibly(autojump_clock: MockClock) -> None:
    conns = {
        "a": conn_table(default_model="m", weight=3.0),
        "b": conn_table(default_model="m", weight=1.0),
        "z": conn_table(default_model="m", weight=0.0),
    }
    async with rig(conns) as r:
        served = [
            (await chat(r.router, ask("m", strategy="weighted"))).connection for _ in range(200)
        ]
    counts = {name: served.count(name) for name in ("a", "b", "z")}
    assert counts["z"] == 0
    assert 130 <= counts["a"] <= 170
    assert counts["a"] + counts["b"] == 200


async def test_least_busy_prefers_the_connection_with_less_work(autojump_clock: MockClock) -> None:
    conns = {"a": conn_table(default_model="m"), "b": conn_table(default_model="m", priority=1)}
    plans = {"a": always(Latency(seconds=10.0)), "b": always(Latency(seconds=10.0))}
    routes = {
        "m": {"targets": [{"connection": "a"}, {"connection": "b"}], "strategy": "least_busy"}
    }
    served: list[tuple[str, float]] = []

    async def one() -> None:
        done = await chat(r.router, ask("m"))
        served.append((done.connection, trio.current_time()))

    async with rig(conns, routes, plans) as r, trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
            await trio.sleep(1.0)
    # a (idle, first by priority), then b (a is busy), then a (one each: tie -> priority).
    assert sorted(served, key=lambda s: s[1]) == [("a", 10.0), ("b", 11.0), ("a", 12.0)]


async def test_lowest_latency_measures_everyone_then_prefers_the_fastest(
    autojump_clock: MockClock,
) -> None:
    conns = {"a": conn_table(default_model="m"), "b": conn_table(default_model="m")}
    plans = {"a": always(Latency(seconds=2.0)), "b": always(Latency(seconds=0.5))}
    async with rig(conns, plans=plans) as r:
        order = []
        for _ in range(4):
            order.append((await chat(r.router, ask("m", strategy="lowest_latency"))).connection)
        # Unmeasured targets go first so they get measured: a (priority tie), b, then b.
        assert order == ["a", "b", "b", "b"]
        assert r.conn("a").ttft_ewma == 2.0
        assert r.conn("b").ttft_ewma == 0.5


async def test_unknown_strategy_is_a_bad_request(autojump_clock: MockClock) -> None:
    async with rig(TWO, SMART) as r:
        result = await r.router.chat(ask(strategy="fastest"))
        assert isinstance(result, Failure)
        assert result.kind is ErrorKind.BAD_REQUEST
        assert "fastest" in result.message
        assert "least_busy" in result.message


# --------------------------------------------------------------------------- availability


async def test_open_breaker_and_parked_limiter_are_skipped_without_an_attempt(
    autojump_clock: MockClock,
) -> None:
    conns = {
        "a": conn_table(default_model="m-a"),
        "b": conn_table(default_model="m-b"),
        "c": conn_table(default_model="m-c"),
    }
    routes = {"smart": {"targets": [{"connection": n} for n in "abc"]}}
    plans = {"b": FaultPlan.first(1, RateLimited(retry_after=30.0))}
    async with rig(conns, routes, plans) as r:
        r.conn("a").force_open()
        first = await chat(r.router, ask())
        assert first.connection == "c"
        assert r.faults("b") == ["rate_limited"]
        assert r.conn("b").unavailable_for(trio.current_time()) == 30.0
        await trio.sleep(5.0)
        second = await chat(r.router, ask())
        assert second.connection == "c"
        assert r.faults("a") == []
        assert r.faults("b") == ["rate_limited"]
        await trio.sleep(25.0)  # b's park ends at t=30
        third = await chat(r.router, ask())
        assert third.connection == "b"
        assert trio.current_time() == 30.0


async def test_every_target_unavailable_fails_at_once_with_the_earliest_retry_after(
    autojump_clock: MockClock,
) -> None:
    plans = {
        "a": always(RateLimited(retry_after=30.0)),
        "b": always(RateLimited(retry_after=12.0)),
    }
    async with rig(TWO, SMART, plans) as r:
        first = await r.router.chat(ask())
        assert isinstance(first, Failure)
        assert first.kind is ErrorKind.RATE_LIMITED
        assert (first.connection, first.attempts) == ("b", 2)
        await trio.sleep(2.0)
        # Neither becomes available within the 5 s deadline: no point waiting.
        second = await r.router.chat(ask(timeout=5.0))
        assert isinstance(second, Failure)
        assert second.kind is ErrorKind.CIRCUIT_OPEN
        assert second.retryable
        assert second.retry_after == 10.0
        assert second.attempts == 0
        assert "unavailable" in second.message
        assert trio.current_time() == 2.0
        assert len(r.faults("a")) == len(r.faults("b")) == 1


# --------------------------------------------------------------------------- failover kinds


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (ContentFiltered(), ErrorKind.CONTENT_FILTER),
        (Unauthorized(), ErrorKind.AUTH),
        (ContextLengthExceeded(), ErrorKind.CONTEXT_LENGTH),
    ],
)
async def test_caller_and_config_errors_are_not_failed_over(
    fault: Fault, kind: ErrorKind, autojump_clock: MockClock
) -> None:
    async with rig(TWO, SMART, {"a": always(fault)}) as r:
        result = await r.router.chat(ask())
        assert isinstance(result, Failure)
        assert (result.kind, result.connection, result.status) == (
            kind,
            "a",
            400 + (kind is ErrorKind.AUTH),
        )
        assert result.message.startswith("HTTP 40")  # the provider's own reason
        assert r.faults("b") == []
        assert r.router.failovers == 0


async def test_bad_request_is_not_failed_over_and_keeps_the_reason(
    autojump_clock: MockClock,
) -> None:
    async with rig(TWO, SMART) as r:
        # A body the provider cannot read: its own 400.
        result = await r.router.chat(ask(extra={"messages": "not a list"}))
        assert isinstance(result, Failure)
        assert (result.kind, result.connection, result.status) == (ErrorKind.BAD_REQUEST, "a", 400)
        assert r.faults("a") == ["bad_request"]
        assert r.faults("b") == []


@pytest.mark.parametrize(
    "fault", [ServerError(status=500), ServerError(status=503), RateLimited(retry_after=1.0)]
)
async def test_provider_trouble_fails_over_after_the_connections_own_retries(
    fault: Fault, autojump_clock: MockClock
) -> None:
    conns = {
        "a": conn_table(default_model="m-a", retry={"max_attempts": 2, "jitter": 0.0}),
        "b": conn_table(default_model="m-b"),
    }
    async with rig(conns, SMART, {"a": always(fault)}) as r:
        done = await chat(r.router, ask())
        assert (done.connection, done.model, done.attempts) == ("b", "m-b", 3)
        assert len(r.faults("a")) == 2
        # 500/503: one 0.5 s backoff; 429: the 1 s retry-after.
        assert trio.current_time() == (1.0 if isinstance(fault, RateLimited) else 0.5)


async def test_a_silent_target_fails_over_instead_of_being_retried(
    autojump_clock: MockClock,
) -> None:
    slow = {"max_attempts": 3, "jitter": 0.0}
    conns = {
        "a": conn_table(default_model="m-a", retry=slow, timeouts={"first_token": 5.0}),
        "b": conn_table(default_model="m-b"),
    }
    async with rig(conns, SMART, {"a": always(NoResponse())}) as r:
        done = await chat(r.router, ask())
        assert (done.connection, trio.current_time()) == ("b", 5.0)
        assert r.outcomes("a") == ["hung"]
        # Alone (no fallback), the same connection retries its silent attempts.
        start = trio.current_time()
        alone = await r.router.chat(ask("a/m-a"))
        assert isinstance(alone, Failure)
        assert alone.kind is ErrorKind.TIMEOUT
        assert alone.attempts == 3
        assert trio.current_time() - start == 5.0 * 3 + 0.5 + 1.0


async def test_context_length_routes_to_the_larger_context_target(
    autojump_clock: MockClock,
) -> None:
    conns = {
        "small": conn_table(default_model="m-small"),
        "other": conn_table(default_model="m-other"),
        "big": conn_table("anthropic", default_model="m-big"),
    }
    routes: dict[str, dict[str, Any]] = {
        "smart": {
            "targets": [{"connection": "small"}, {"connection": "other"}],
            "context_fallback": "long",
        },
        "long": {"targets": [{"connection": "big"}]},
    }
    small_window: dict[str, Any] = {"context_window": 5}
    async with rig(conns, routes, core={"small": small_window, "other": small_window}) as r:
        prompt = "word " * 50
        long = ChatRequest(model="smart", messages=[Message(role="user", content=prompt)])
        done = await chat(r.router, long)
        assert (done.connection, done.model, done.attempts) == ("big", "m-big", 2)
        assert r.faults("small") == ["context_length_exceeded"]
        assert r.faults("other") == []
        # And streamed.
        events, result = await collect(r.router, long)
        assert isinstance(result, Completion)
        assert result.connection == "big"
        assert not any(isinstance(e, Restart) for e in events)


# --------------------------------------------------------------------------- mid-stream


def midstream(policy: str, *, prefill: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    conns = {
        "a": conn_table("anthropic", default_model="m-a"),
        "b": conn_table("anthropic", default_model="m-b", supports_prefill=prefill),
    }
    routes = {
        "smart": {"targets": [{"connection": "a"}, {"connection": "b"}], "mid_stream": policy}
    }
    return conns, routes


CUT = always(StreamCut(after_tokens=3))


async def test_mid_stream_fail_returns_stream_interrupted_with_partial_usage(
    autojump_clock: MockClock,
) -> None:
    conns, routes = midstream("fail")
    async with rig(conns, routes, {"a": CUT}) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Failure)
        assert (result.kind, result.connection) == (ErrorKind.STREAM_INTERRUPTED, "a")
        assert not result.retryable
        assert result.usage is not None
        assert result.usage.input_tokens > 0
        assert len(texts(events).split()) == 3
        assert r.faults("b") == []
        assert r.router.failovers == 0


async def test_mid_stream_restart_sends_restart_then_the_whole_answer_from_the_next(
    autojump_clock: MockClock,
) -> None:
    conns, routes = midstream("restart")
    async with rig(conns, routes, {"a": CUT}) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "b"
        cut = next(i for i, e in enumerate(events) if isinstance(e, Restart))
        restart = events[cut]
        assert isinstance(restart, Restart)
        assert (restart.connection, restart.model) == ("b", "m-b")
        assert restart.reason.startswith("stream_interrupted")
        assert len(texts(events[:cut]).split()) == 3
        assert texts(events[cut:]) == result.text
        assert r.router.failovers == 1


async def test_mid_stream_continue_prefills_the_text_so_far_on_a_prefill_target(
    autojump_clock: MockClock,
) -> None:
    conns, routes = midstream("continue", prefill=True)
    async with rig(conns, routes, {"a": CUT}) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "b"
        assert not any(isinstance(e, Restart) for e in events)
        assert result.text == texts(events)  # the prefix and the continuation
        body = r.transports["b"].attempts[0].body
        prefix = texts(events[:3])
        assert b'{"role":"assistant","content":"' + prefix.encode() + b'"}' in body


async def test_mid_stream_continue_without_prefill_support_restarts(
    autojump_clock: MockClock,
) -> None:
    conns, routes = midstream("continue", prefill=False)
    async with rig(conns, routes, {"a": CUT}) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "b"
        assert sum(isinstance(e, Restart) for e in events) == 1
        assert b'"role":"assistant"' not in r.transports["b"].attempts[0].body


async def test_mid_stream_continue_rejected_by_the_target_falls_back_to_restart(
    autojump_clock: MockClock,
) -> None:
    conns, routes = midstream("continue", prefill=True)
    plans = {"a": CUT, "b": always(PrefillRejected())}
    async with rig(conns, routes, plans) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion), result
        assert result.connection == "b"
        assert result.attempts == 3
        assert r.faults("b") == ["prefill_rejected", "healthy"]
        restarts = [e for e in events if isinstance(e, Restart)]
        assert len(restarts) == 1
        assert "prefill" in restarts[0].reason
        after = events[events.index(restarts[0]) :]
        assert texts(after) == result.text


# --------------------------------------------------------------------------- hedging


def hedged(after: float | str) -> tuple[dict[str, Any], dict[str, Any]]:
    conns = {
        "a": conn_table("anthropic", default_model="m-a"),
        "b": conn_table(default_model="m-b"),
    }
    routes = {
        "smart": {"targets": [{"connection": "a"}, {"connection": "b"}], "hedge_after_s": after}
    }
    return conns, routes


async def test_hedge_starts_the_next_target_and_cancels_the_loser(
    autojump_clock: MockClock,
) -> None:
    conns, routes = hedged(2.0)
    # a sends its headers and message_start (input usage), then nothing for 10 s.
    plans = {"a": always(Stall(after_tokens=0, seconds=10.0))}
    async with rig(conns, routes, plans) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert (result.connection, trio.current_time()) == ("b", 2.0)
        assert result.attempts == 2
        assert texts(events) == result.text
        assert r.outcomes("a") == ["client_closed"]
        assert r.transports["a"].attempts[0].ended_at == 2.0
        await trio.lowlevel.checkpoint()  # let a's actor record the cancelled attempt
        a = r.conn("a").metrics.snapshot()
        assert a.models["m-a"].wasted_input_tokens == a.models["m-a"].input_tokens > 0
        assert a.failures == {"cancelled": 1}
        b = r.conn("b").metrics.snapshot()
        assert b.models["m-b"].wasted_input_tokens == 0
        assert b.models["m-b"].input_tokens == result.usage.input_tokens


async def test_hedge_keeps_the_first_target_when_it_answers_first(
    autojump_clock: MockClock,
) -> None:
    conns, routes = hedged(2.0)
    plans = {"a": always(SlowFirstToken(seconds=3.0)), "b": always(SlowFirstToken(seconds=5.0))}
    async with rig(conns, routes, plans) as r:
        _events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "a"
        assert r.transports["b"].attempts[0].arrived_at == 2.0
        assert r.outcomes("b") == ["client_closed"]
        assert r.transports["b"].attempts[0].ended_at == 3.0


async def test_hedge_auto_learns_twice_the_moving_time_to_first_token(
    autojump_clock: MockClock,
) -> None:
    conns, routes = hedged("auto")
    plans = {
        "a": FaultPlan(
            rules=(
                Rule(fault=Latency(seconds=1.0), arrival_to=1),
                Rule(fault=Latency(seconds=30.0)),
            )
        )
    }
    async with rig(conns, routes, plans) as r:
        # Unmeasured: no hedge; a answers after 1 s and is measured.
        _, first = await collect(r.router, ask(stream=True))
        assert isinstance(first, Completion)
        assert first.connection == "a"
        assert r.faults("b") == []
        assert r.conn("a").ttft_ewma == 1.0
        start = trio.current_time()
        _, second = await collect(r.router, ask(stream=True))
        assert isinstance(second, Completion)
        assert second.connection == "b"
        assert trio.current_time() - start == 2.0
        assert r.outcomes("a") == ["completed", "client_closed"]


async def test_hedge_starts_the_partner_at_once_when_the_first_fails_early(
    autojump_clock: MockClock,
) -> None:
    conns, routes = hedged(5.0)
    async with rig(conns, routes, {"a": always(ServerError(status=500))}) as r:
        _, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "b"
        assert trio.current_time() == 0.0
        assert result.attempts == 2


# --------------------------------------------------------------------------- accounting


async def test_accounting_after_failover_bills_only_the_winning_attempt(
    autojump_clock: MockClock,
) -> None:
    prices = {"prices": {"*": {"input": 1_000_000.0, "output": 2_000_000.0}}}
    conns = {
        "a": conn_table("anthropic", default_model="m-a", **prices),
        "b": conn_table("anthropic", default_model="m-b", **prices),
    }
    routes = {
        "smart": {"targets": [{"connection": "a"}, {"connection": "b"}], "mid_stream": "restart"}
    }
    async with rig(conns, routes, {"a": CUT}) as r:
        _events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion)
        assert result.connection == "b"
        a = r.conn("a").metrics.snapshot().models["m-a"]
        b = r.conn("b").metrics.snapshot().models["m-b"]
        # The completion carries b's usage and cost only.
        assert (b.input_tokens, b.output_tokens) == (
            result.usage.input_tokens,
            result.usage.output_tokens,
        )
        assert result.cost == result.usage.input_tokens + 2 * result.usage.output_tokens
        assert (b.wasted_input_tokens, b.wasted_output_tokens) == (0, 0)
        # a's partial usage is recorded, as wasted, on a.
        assert a.input_tokens > 0
        assert (a.wasted_input_tokens, a.wasted_output_tokens) == (a.input_tokens, a.output_tokens)
        assert a.cost == a.input_tokens + 2 * a.output_tokens
