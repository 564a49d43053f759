"""The runtime facade: hot swap, dynamic connections, probe, model resolution, metrics
(typed and Prometheus), health and structured logs - against in-memory fake providers under
the autojump clock.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from actors.testing._faults import (
    FaultPlan,
    Latency,
    RateLimited,
    Rule,
    ServerError,
    StreamCut,
    Unauthorized,
)
from actors.testing._transport import FakeTransport
from protocol._config_load import connection_from_dict, loads_config
from protocol._errors import ConfigError, ErrorKind, RequestFailed
from protocol._messages import ChatRequest, Completion, Failure, Message
from supervisors._runtime import open_runtime

CONFIG = """
[connections.openai]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-live-SECRET-openai"
default_model = "gpt-4o"
models = { fast = "gpt-4o-mini" }
retry = { max_attempts = 3, jitter = 0.0 }

[connections.openai.prices]
"gpt-4o" = { input = 2.5, output = 10.0 }
"gpt-4o-mini" = { input = 0.15, output = 0.6 }

[connections.anthropic]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "sk-live-SECRET-anthropic"
default_model = "claude-sonnet"
serves = ["claude-*"]
retry = { max_attempts = 1 }
prices = { "*" = { input = 3.0, output = 15.0 } }

[routes.smart]
targets = [{ connection = "openai" }, { connection = "anthropic" }]

[routes.claude-first]
targets = [{ connection = "anthropic" }, { connection = "openai" }]
mid_stream = "restart"
"""


def ask(model: str, text: str = "hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


async def test_connections_for_resolves_routes_aliases_patterns_defaults_and_pins(
    autojump_clock: MockClock,
) -> None:
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport()) as rt:
        assert rt.connections_for("smart") == ["openai", "anthropic"]
        assert rt.connections_for("fast") == ["openai"]
        assert rt.connections_for("gpt-4o") == ["openai"]
        assert rt.connections_for("claude-3-haiku") == ["anthropic"]
        assert rt.connections_for("claude-sonnet") == ["anthropic"]
        assert rt.connections_for("anthropic/claude-opus") == ["anthropic"]
        assert rt.connections_for("llama3") == []
        done = await rt.chat(ask("fast"))
        assert (done.connection, done.model) == ("openai", "gpt-4o-mini")
        pinned = await rt.chat(ask("anthropic/claude-opus"))
        assert (pinned.connection, pinned.model) == ("anthropic", "claude-opus")
        with pytest.raises(RequestFailed) as caught:
            await rt.chat(ask("llama3"))
        assert caught.value.failure.kind is ErrorKind.NOT_FOUND


async def test_override_connection_is_a_hot_swap(autojump_clock: MockClock) -> None:
    # The first request of each model gets a 500.
    plan = FaultPlan(
        rules=(
            Rule(fault=ServerError(status=500), models=("gpt-4o-mini",), arrival_to=1),
            Rule(fault=ServerError(status=500), models=("o1-mini",), per_model=True, arrivals=(1,)),
        )
    )
    transport = FakeTransport(plan=plan)
    async with open_runtime(loads_config(CONFIG), transports={"openai": transport}) as rt:
        results: dict[str, Completion | Failure] = {}

        async def first() -> None:
            results["old"] = await rt.router.chat(ask("fast"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.sleep(0.1)  # the first attempt failed; the retry waits 0.5 s
            new = rt.override_connection(
                "openai",
                base_url="http://proxy.test/v1",
                models={"fast": "o1-mini"},
                retry={"max_attempts": 1},
                api_key="sk-test",
            )
            assert new.retry.max_attempts == 1
            assert rt.connection("openai").config is new
            with pytest.raises(RequestFailed) as caught:
                await rt.chat(ask("fast"))  # new settings: one attempt only
            results["new"] = caught.value.failure
            results["newer"] = await rt.chat(ask("fast"))
        old, failed, newer = results["old"], results["new"], results["newer"]
        # In flight at the swap: finished on the old settings (model, URL, key, 2nd attempt).
        assert isinstance(old, Completion)
        assert (old.model, old.attempts, old.latency) == ("gpt-4o-mini", 2, 0.5)
        assert isinstance(failed, Failure)
        assert (failed.kind, failed.model, failed.attempts) == (
            ErrorKind.SERVER_ERROR,
            "o1-mini",
            1,
        )
        assert isinstance(newer, Completion)
        assert newer.model == "o1-mini"
        hosts = [(a.headers["host"], a.model, a.arrived_at) for a in transport.attempts]
        assert hosts == [
            ("fake", "gpt-4o-mini", 0.0),
            ("proxy.test", "o1-mini", 0.1),
            ("proxy.test", "o1-mini", 0.1),
            ("fake", "gpt-4o-mini", 0.5),
        ]
        keys = [a.headers["authorization"] for a in transport.attempts]
        assert keys == [
            "Bearer sk-live-SECRET-openai",
            "Bearer sk-test",
            "Bearer sk-test",
            "Bearer sk-live-SECRET-openai",
        ]
        with pytest.raises(ConfigError) as bad:
            rt.override_connection("openai", retry={"max_attempts": "many"}, colour="blue")
        assert [key for key, _ in bad.value.problems] == ["retry", "colour"]
        with pytest.raises(KeyError):
            rt.override_connection("nope", base_url="http://x")


async def test_add_and_remove_connections_while_running(autojump_clock: MockClock) -> None:
    slow = FakeTransport(plan=FaultPlan.always(Latency(seconds=3.0)))
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport()) as rt:
        extra = connection_from_dict(
            "local",
            {"provider": "ollama", "base_url": "http://fake", "default_model": "llama3.1"},
        )
        await rt.add_connection(extra, transport=slow)
        assert rt.connections_for("llama3.1") == ["local"]
        assert [h.name for h in rt.health().connections] == ["openai", "anthropic", "local"]
        with pytest.raises(ValueError, match="already exists"):
            await rt.add_connection(extra)
        got: list[tuple[str, float]] = []

        async def call() -> None:
            done = await rt.chat(ask("llama3.1"))
            got.append((done.connection, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(1.0)
            await rt.remove_connection("local")  # graceful: the in-flight request finishes
            assert trio.current_time() == 3.0
        assert got == [("local", 3.0)]
        assert rt.connections_for("llama3.1") == []
        assert "local" not in rt.metrics().connections
        with pytest.raises(KeyError):
            await rt.remove_connection("local")


async def test_probe_checks_endpoint_and_key(autojump_clock: MockClock) -> None:
    bad_key = FakeTransport(plan=FaultPlan.always(Unauthorized()))
    ok = FakeTransport(plan=FaultPlan.always(Latency(seconds=0.25)))
    async with open_runtime(
        loads_config(CONFIG), transports={"openai": ok, "anthropic": bad_key}
    ) as rt:
        good = await rt.probe("openai")
        assert (good.ok, good.model, good.latency, good.failure) == (True, "gpt-4o", 0.25, None)
        assert b'"max_tokens":1' in ok.attempts[0].body or b'"max_completion_tokens":1' in (
            ok.attempts[0].body
        )
        refused = await rt.probe("anthropic")
        assert not refused.ok
        assert refused.failure is not None
        assert refused.failure.kind is ErrorKind.AUTH
        with pytest.raises(KeyError):
            await rt.probe("missing")


async def test_health_reports_ok_degraded_and_down(autojump_clock: MockClock) -> None:
    plan = FaultPlan.first(1, RateLimited(retry_after=20.0))
    async with open_runtime(
        loads_config(CONFIG), transports={"anthropic": FakeTransport(plan=plan)}
    ) as rt:
        assert rt.health().status == "ok"
        with pytest.raises(RequestFailed):
            await rt.chat(ask("claude-sonnet"))  # a 429 parks the limiter for 20 s
        health = rt.health()
        assert health.status == "degraded"
        row = {h.name: h for h in health.connections}["anthropic"]
        assert (row.parked_for, row.breaker, row.running) == (20.0, "closed", True)
        rt.connection("openai").force_open()
        down = rt.health()
        assert down.status == "down"
        assert {h.name: h.breaker for h in down.connections}["openai"] == "forced_open"
        rt.connection("openai").force_close()
        await trio.sleep(20.0)
        assert rt.health().status == "ok"


async def test_metrics_typed_snapshot_and_prometheus_text(autojump_clock: MockClock) -> None:
    openai = FakeTransport(plan=FaultPlan.first(1, ServerError(status=500)))
    anthropic = FakeTransport(plan=FaultPlan.first(1, StreamCut(after_tokens=2)))
    async with open_runtime(
        loads_config(CONFIG), transports={"openai": openai, "anthropic": anthropic}
    ) as rt:
        first = await rt.chat(ask("smart"))  # a 500, then a retry after 0.5 s
        assert (first.connection, first.attempts, trio.current_time()) == ("openai", 2, 0.5)
        # anthropic's stream is cut after 2 tokens; restarted on openai.
        async with rt.stream(ask("claude-first", stream=True)) as s:
            async for _ in s:
                pass
        second = s.result
        assert isinstance(second, Completion)
        assert second.connection == "openai"
        with pytest.raises(RequestFailed):
            await rt.chat(ask("llama3"))
        rt.connection("openai").force_open()
        m = rt.metrics()
    assert (m.requests, m.completions, m.failures) == (3, 2, {"not_found": 1})
    oa, an = m.connections["openai"], m.connections["anthropic"]
    assert (oa.requests, oa.attempts, oa.retries, oa.completions) == (2, 3, 1, 2)
    assert oa.breaker_transitions == {"closed->forced_open": 1}
    assert (an.requests, an.attempts, an.completions) == (1, 1, 0)
    assert an.failures == {"stream_interrupted": 1}
    assert m.failovers == 1
    assert (m.queued, m.in_flight) == ({"openai": 0, "anthropic": 0}, {"openai": 0, "anthropic": 0})
    assert oa.latency.count == oa.time_to_first_token.count == 2
    assert oa.latency.total == 0.5
    # Tokens by connection and by model, and cost from the configured prices.
    both = first.usage + second.usage
    assert m.tokens_by_connection("openai") == (both.input_tokens, both.output_tokens)
    assert m.tokens_by_model("gpt-4o") == m.tokens_by_connection("openai")
    claude = an.models["claude-sonnet"]
    assert claude.wasted_input_tokens == claude.input_tokens > 0
    assert m.tokens_by_connection("anthropic") == (claude.input_tokens, claude.output_tokens)
    cost_openai = (both.input_tokens * 2.5 + both.output_tokens * 10.0) / 1e6
    assert m.estimated_cost("openai") == pytest.approx(cost_openai)
    assert first.cost is not None
    assert second.cost is not None
    assert first.cost + second.cost == pytest.approx(cost_openai)
    cost_claude = (claude.input_tokens * 3.0 + claude.output_tokens * 15.0) / 1e6
    assert m.estimated_cost("anthropic") == pytest.approx(cost_claude)
    assert m.estimated_cost() == pytest.approx(cost_openai + cost_claude)
    text = m.prometheus()
    for line in (
        'switchboard_requests_total{connection="openai"} 2',
        'switchboard_attempts_total{connection="openai"} 3',
        'switchboard_retries_total{connection="openai"} 1',
        'switchboard_failures_total{connection="anthropic",kind="stream_interrupted"} 1',
        "switchboard_breaker_transitions_total"
        '{connection="openai",transition="closed->forced_open"} 1',
        f'switchboard_tokens_total{{connection="openai",model="gpt-4o",direction="in"}} '
        f"{both.input_tokens}",
        'switchboard_latency_seconds_bucket{connection="openai",le="0.5"} 2',
        'switchboard_time_to_first_token_seconds_count{connection="openai"} 2',
        "switchboard_routed_requests_total 3",
        'switchboard_routed_failures_total{kind="not_found"} 1',
        'switchboard_queue_depth{connection="openai"} 0',
        'switchboard_in_flight{connection="anthropic"} 0',
        f'switchboard_wasted_tokens_total{{connection="anthropic",model="claude-sonnet",'
        f'direction="in"}} {claude.wasted_input_tokens}',
        "switchboard_failovers_total 1",
    ):
        assert line in text.splitlines(), line
    assert "switchboard_cost_total{" in text
    assert "SECRET" not in text


async def test_every_attempt_is_logged_as_a_structured_record_without_keys_or_prompts(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "my confidential prompt about project zebra"
    plan = FaultPlan.first(1, ServerError(status=503))
    caplog.set_level(logging.DEBUG)
    async with open_runtime(
        loads_config(CONFIG), transports={"openai": FakeTransport(plan=plan)}, rng=random.Random(0)
    ) as rt:
        done = await rt.chat(ask("gpt-4o", prompt, request_id="req-42"))
    attempts = [r for r in caplog.records if getattr(r, "attempt", None) is not None]
    assert [(r.attempt, r.status, r.error_kind) for r in attempts] == [  # type: ignore[attr-defined]
        (1, 503, "overloaded"),
        (2, 200, None),
    ]
    for record in attempts:
        fields = record.__dict__
        assert fields["request_id"] == "req-42"
        assert (fields["connection"], fields["model"]) == ("openai", "gpt-4o")
        assert fields["duration"] == 0.0
        assert "time_to_first_token" in fields
    last = attempts[-1].__dict__
    assert (last["input_tokens"], last["output_tokens"]) == (
        done.usage.input_tokens,
        done.usage.output_tokens,
    )
    assert caplog.records
    for record in caplog.records:
        rendered = record.getMessage() + repr(record.__dict__)
        assert "SECRET" not in rendered
        assert "zebra" not in rendered
        assert "confidential" not in rendered
