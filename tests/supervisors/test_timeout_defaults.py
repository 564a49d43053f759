"""With default time limits a silent provider is failed over (issue 10 item 7).

A primary and a fallback behind a priority route, every setting at its default; the primary
accepts requests and then says nothing. Exact virtual time (autojump clock, in-memory
fakes). Before `TimeoutConfig` had defaults (``first_token``/``stall`` were ``None``) such a
request waited for its whole 60 s budget and failed with ``deadline``: the fallback was never
tried.
"""

from __future__ import annotations

import random

import pytest
import trio
from trio.testing import MockClock

from actors.testing import FakeTransport, FaultPlan, NoResponse, SlowFirstToken, Stall
from protocol._config import ConnectionConfig, TimeoutConfig
from protocol._config_load import loads_config
from protocol._errors import ErrorKind
from protocol._messages import ChatRequest, Completion, Failure, Message, TextDelta
from supervisors import open_runtime

CONFIG = """
[connections.primary]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-primary"
default_model = "gpt-4o"

[connections.fallback]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "sk-fallback"
default_model = "claude-sonnet"

[routes.smart]
targets = [{ connection = "primary" }, { connection = "fallback" }]
"""


def ask(*, stream: bool) -> ChatRequest:
    return ChatRequest(model="smart", messages=[Message(role="user", content="hi")], stream=stream)


def test_the_defaults_fit_twice_into_the_default_request_budget() -> None:
    timeouts = TimeoutConfig()
    assert (timeouts.connect, timeouts.first_token, timeouts.stall) == (10.0, 30.0, 30.0)
    assert ConnectionConfig().timeout >= 2 * 30.0  # the fallback gets the other half


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_silent_primary_is_failed_over_after_30s(
    stream: bool, autojump_clock: MockClock
) -> None:
    config = loads_config(CONFIG)
    assert config.connections["primary"].timeouts == TimeoutConfig()  # the defaults under test
    primary = FakeTransport(plan=FaultPlan.always(NoResponse()))
    fallback = FakeTransport()
    transports = {"primary": primary, "fallback": fallback}
    async with open_runtime(config, transports=transports, rng=random.Random(0)) as rt:
        if stream:
            async with rt.stream(ask(stream=True)) as events:
                text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
            done = events.result
        else:
            done = await rt.chat(ask(stream=False))
            text = done.text
    assert isinstance(done, Completion), done
    assert done.connection == "fallback"
    assert text == done.text
    assert trio.current_time() == 30.0  # first_token, then the fallback answers at once
    # The silent route is not retried on the same connection when a fallback exists.
    assert [a.arrived_at for a in primary.attempts] == [0.0]
    assert [a.arrived_at for a in fallback.attempts] == [30.0]


async def test_a_stream_that_goes_silent_midway_ends_after_30s(autojump_clock: MockClock) -> None:
    # After output was streamed the default mid-stream policy is to fail, not to restart:
    # the caller learns at 30 s (stall) instead of at the 60 s deadline.
    config = loads_config(CONFIG)
    primary = FakeTransport(plan=FaultPlan.always(Stall(after_tokens=2, then="hang")))
    transports = {"primary": primary, "fallback": FakeTransport()}
    async with (
        open_runtime(config, transports=transports, rng=random.Random(0)) as rt,
        rt.stream(ask(stream=True)) as events,
    ):
        text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    failure = events.result
    assert isinstance(failure, Failure), failure
    assert text  # two tokens came before the silence
    assert failure.kind is ErrorKind.TIMEOUT
    assert "timeouts.stall" in failure.message
    assert trio.current_time() == 30.0


@pytest.mark.parametrize(
    "fault",
    [SlowFirstToken(seconds=1000.0), Stall(after_tokens=0, then="hang")],
    ids=["slow-first-token", "head-then-hang"],
)
async def test_a_primary_that_answers_200_then_says_nothing_is_failed_over(
    fault: SlowFirstToken | Stall, autojump_clock: MockClock
) -> None:
    """A head and then silence is as silent as no head: fail over at first_token."""
    config = loads_config(CONFIG)
    primary = FakeTransport(plan=FaultPlan.always(fault))
    fallback = FakeTransport()
    transports = {"primary": primary, "fallback": fallback}
    async with (
        open_runtime(config, transports=transports, rng=random.Random(0)) as rt,
        rt.stream(ask(stream=True)) as events,
    ):
        text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    done = events.result
    assert isinstance(done, Completion), done
    assert done.connection == "fallback"
    assert text == done.text
    assert trio.current_time() == 30.0
    assert [a.arrived_at for a in primary.attempts] == [0.0]
    assert [a.arrived_at for a in fallback.attempts] == [30.0]
