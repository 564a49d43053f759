"""The runtime's hot path, by its structure (never by time: `bench/overhead.py` measures the
cost): a routed stream is read in the caller's task with no relay task in between, a request
is checked once, and a handle's ``wait`` reads what is left of its stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import actors._provider
import actors._router
from actors.testing._transport import FakeTransport
from protocol._config_load import loads_config
from protocol._messages import ChatRequest, Completion, Message, TextDelta
from supervisors._runtime import open_runtime

CONFIG = """
[connections.a]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-test-a"
default_model = "gpt-4o"
"""


def ask(**fields: Any) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=[Message(role="user", content="hello")], **fields)


class Spawns(trio.abc.Instrument):
    """Names of the tasks spawned while installed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


@contextmanager
def spawns() -> Iterator[Spawns]:
    instrument = Spawns()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield instrument
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def test_a_routed_stream_is_read_in_the_callers_task(autojump_clock: MockClock) -> None:
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
        with spawns() as spawned:
            async with rt.stream(ask()) as s:
                events = [event async for event in s]
        assert isinstance(s.result, Completion)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == s.result.text
        assert [name for name in spawned.names if "_router" in name] == []


@pytest.mark.parametrize("streamed", [False, True])
async def test_the_router_checks_a_request_once(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    checks: list[str] = []

    def counting(module: Any) -> None:
        real = module.refusal

        def refusal(request: Any, **options: Any) -> Any:
            checks.append(module.__name__)
            return real(request, **options)

        monkeypatch.setattr(module, "refusal", refusal)

    counting(actors._router)
    counting(actors._provider)
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
        if streamed:
            async with rt.stream(ask()) as s:
                async for _ in s:
                    pass
            assert isinstance(s.result, Completion)
        else:
            await rt.chat(ask())
        assert checks == ["actors._router"]
        # A connection called directly still checks at its own door.
        await rt.connection("a").chat(ask())
        assert checks == ["actors._router", "actors._provider"]


async def test_wait_reads_what_is_left_of_the_stream(autojump_clock: MockClock) -> None:
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
        with trio.fail_after(60):
            async with rt.stream(ask()) as s:
                result = await s.wait()
        assert isinstance(result, Completion)
        assert result.text
        assert s.result is result


async def test_a_fixed_order_is_planned_once_per_name(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders: list[str] = []
    real = actors._router.Router._order

    def counting(self: actors._router.Router, targets: Any, strategy: str) -> Any:
        orders.append(strategy)
        return real(self, targets, strategy)

    monkeypatch.setattr(actors._router.Router, "_order", counting)
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
        for _ in range(3):
            await rt.chat(ask())
        assert orders == ["priority"]
        await rt.chat(ask(strategy="least_busy"))  # chosen per request: planned each time
        await rt.chat(ask(strategy="least_busy"))
        assert orders == ["priority", "least_busy", "least_busy"]
        rt.override_connection("a", timeout=30.0)  # reconfigured: planned again
        await rt.chat(ask())
        assert orders == ["priority", "least_busy", "least_busy", "priority"]
