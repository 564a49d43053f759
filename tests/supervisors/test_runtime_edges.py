"""Edge cases a review found: each test failed before its fix."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors.testing import FakeTransport, FaultPlan, Latency
from protocol import (
    BreakerConfig,
    ChatRequest,
    ConfigError,
    ErrorKind,
    Message,
    RequestFailed,
    loads_config,
)
from supervisors import open_runtime

TWO = """
[connections.primary]
provider = "openai"
base_url = "http://fake/v1"
default_model = "m"
prices."m-2024" = { input = 1000000.0, output = 0.0 }

[connections.backup]
provider = "ollama"
base_url = "http://fake"
default_model = "m"

[routes.r]
targets = [{ connection = "primary" }, { connection = "backup" }]
"""


def ask(model: str = "r", **fields: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content="one two")], **fields)  # type: ignore[arg-type]


async def test_exceptions_in_the_callers_block_are_not_wrapped_in_groups(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with (
            open_runtime(loads_config(TWO), transport=FakeTransport()) as rt,
            rt.stream(ask()) as stream,
        ):
            async for _ in stream:
                raise KeyError("mine")
    with pytest.raises(RequestFailed):
        async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
            await rt.chat(ask("no-such-model"))


async def test_override_of_the_breaker_while_a_request_is_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = FakeTransport(plan=FaultPlan(sequence=(Latency(seconds=5.0),)))
    async with open_runtime(loads_config(TWO), transports={"primary": slow}) as rt:
        async with trio.open_nursery() as nursery:
            results: list[object] = []

            async def call() -> None:
                results.append(await rt.chat(ask("primary/m")))

            nursery.start_soon(call)
            await trio.sleep(1)
            rt.override_connection("primary", breaker={"window_size": 5, "minimum_calls": 5})
        assert len(results) == 1
        assert rt.health().connections[0].incarnation == 1  # no crash


async def test_override_that_breaks_a_cross_field_rule_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
        before = rt.connection("primary").config
        # A Struct is taken as it is (no msgspec checks): the breaker's own check rejects it.
        bad = BreakerConfig(minimum_calls=0)
        with pytest.raises(ConfigError):
            rt.override_connection("primary", base_url="http://other/v1", breaker=bad)
        assert rt.connection("primary").config == before


async def test_removing_a_connection_fails_over_instead_of_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = FakeTransport(plan=FaultPlan(sequence=(Latency(seconds=3.0),)))
    async with (
        open_runtime(
            loads_config(TWO), transports={"primary": slow}, transport=FakeTransport()
        ) as rt,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(rt.chat, ask())  # keeps the primary draining for 3 s
        await trio.sleep(0.5)
        nursery.start_soon(rt.remove_connection, "primary")
        await trio.sleep(0.5)
        done = await rt.chat(ask())
        assert done.connection == "backup"


@pytest.mark.parametrize("timeout", [math.nan, -5.0, math.inf])
async def test_nonsense_timeouts_are_bad_requests(
    timeout: float, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
        with pytest.raises(RequestFailed) as info:
            await rt.chat(ask(timeout=timeout))
        assert info.value.failure.kind is ErrorKind.BAD_REQUEST
        assert rt.health().status == "ok"


async def test_a_zero_timeout_is_a_deadline_not_unavailability(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
        with pytest.raises(RequestFailed) as info:
            await rt.chat(ask(timeout=0.0))
        assert info.value.failure.kind is ErrorKind.DEADLINE


async def test_requests_after_shutdown_say_so(autojump_clock: trio.testing.MockClock) -> None:
    async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
        pass
    with pytest.raises(RequestFailed) as info:
        await rt.chat(ask())
    assert info.value.failure.kind is ErrorKind.CANCELLED
    assert "shut down" in info.value.failure.message


async def test_in_flight_counts_survive_crashes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_runtime(loads_config(TWO), transport=FakeTransport()) as rt:
        conn = rt.connection("primary")
        dialect = conn._generation.dialect
        healthy = dialect.parse_chat
        crashes = 0

        def parse_chat(body: bytes) -> object:
            nonlocal crashes
            if crashes < 2:
                crashes += 1
                raise RuntimeError("a bug in the actor")
            return healthy(body)

        monkeypatch.setattr(dialect, "parse_chat", parse_chat)
        kinds = []
        for _ in range(3):
            try:
                kinds.append((await rt.chat(ask("primary/m"))).connection)
            except RequestFailed as exc:
                kinds.append(exc.failure.kind.value)
        assert kinds == ["crashed", "crashed", "primary"]
        assert conn.incarnation == 3
        assert conn.mailbox.statistics().in_flight == 0


async def test_http_date_retry_after_under_a_virtual_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from actors.testing import RateLimited

    epoch = 1_800_000_000.0

    def wall() -> float:
        return epoch + trio.current_time()

    fake = FakeTransport(
        plan=FaultPlan(sequence=(RateLimited(retry_after=3.0, header="date"),)),
        wall_start=epoch,
    )
    async with open_runtime(loads_config(TWO), transports={"primary": fake}, wall_clock=wall) as rt:
        done = await rt.chat(ask("primary/m"))
    assert done.attempts == 2
    assert [a.arrived_at for a in fake.attempts] == [0.0, 3.0]
