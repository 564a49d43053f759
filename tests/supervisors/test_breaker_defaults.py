"""The default breaker settings bring a recovered primary back (issue 10 item 6).

A primary and a fallback behind a priority route, every setting at its default except retry
jitter (off, so the timeline is exact); the primary answers 503 for the first `down` seconds,
then 200. One request a second (the next one starts when the previous one ends, if later).
Exact virtual time (autojump clock, in-memory fakes). With the old defaults (open 30 s,
doubling to 300 s) the 6 s outage kept traffic off the primary until t=34.5 and the 60 s one
until t=95.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from trio.testing import MockClock

from actors.testing import FakeTransport, FaultPlan
from protocol._config import BreakerConfig
from protocol._config_load import loads_config
from protocol._errors import RequestFailed
from protocol._messages import ChatRequest, Message
from supervisors import open_runtime

CONFIG = """
[connections.primary]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-primary"
default_model = "gpt-4o"
retry = { jitter = 0.0 }

[connections.fallback]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "sk-fallback"
default_model = "claude-sonnet"

[routes.smart]
targets = [{ connection = "primary" }, { connection = "fallback" }]
"""

# How the primary's breaker trips, the same in both runs: each request makes 3 attempts
# (retries after 0.5 s and 1 s) before failing over; request 0 at 0, 0.5, 1.5; request 1
# (due at 1) at 1.5, 2, 3; request 2 at 3, 3.5, 4.5; request 3's first attempt at 4.5 is the
# 10th call in the window (`minimum_calls`), all failed: the breaker opens at 4.5 for 5 s.
TRIP_ATTEMPTS = [0.0, 0.5, 1.5, 1.5, 2.0, 3.0, 3.0, 3.5, 4.5, 4.5]
TRIP_SERVED = [(0.0, 1.5), (1.0, 3.0), (2.0, 4.5), (3.0, 4.5)]  # (due, failed over at)


class Transitions(logging.Handler):
    """Breaker transitions logged by connections, with the trio time they happened."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        to_state = getattr(record, "breaker_to", None)
        if to_state is not None and getattr(record, "connection", None) == "primary":
            self.seen.append((trio.current_time(), record.breaker_from, to_state))  # type: ignore[attr-defined]


@contextmanager
def transitions_logged() -> Iterator[Transitions]:
    log = logging.getLogger("switchboard.provider")
    handler = Transitions()
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


async def run(down: float, seconds: int) -> tuple[list[tuple[float, str, float]], FakeTransport]:
    """``(due, connection that answered, time it answered)`` per request, and the primary."""
    config = loads_config(CONFIG)
    assert config.connections["primary"].breaker == BreakerConfig()  # the defaults under test
    primary = FakeTransport(plan=FaultPlan.flapping(down))
    transports = {"primary": primary, "fallback": FakeTransport()}
    served: list[tuple[float, str, float]] = []
    async with open_runtime(config, transports=transports, rng=random.Random(0)) as rt:
        for due in range(seconds):
            await trio.sleep_until(due)
            request = ChatRequest(model="smart", messages=[Message(role="user", content="hi")])
            try:
                who = (await rt.chat(request)).connection
            except RequestFailed as exc:  # never expected: shown in the assertion's diff
                who = exc.failure.kind.value
            served.append((float(due), who, trio.current_time()))
    return served, primary


def back_on_primary(served: list[tuple[float, str, float]], down: float) -> float:
    """When the first request after the recovery was answered by the primary."""
    return next(at for _, who, at in served if who == "primary" and at >= down)


def expected(back: float, seconds: int) -> list[tuple[float, str, float]]:
    """The trip (see `TRIP_SERVED`), the fallback until *back*, then the primary. Request 4,
    due at 4, starts when request 3 ends (4.5) and goes straight to the fallback."""
    out = [(due, "fallback", at) for due, at in TRIP_SERVED]
    for due in range(len(TRIP_SERVED), seconds):
        at = max(float(due), TRIP_SERVED[-1][1])
        out.append((float(due), "fallback" if due < back else "primary", at))
    return out


async def test_primary_down_6s_is_back_4s_after_recovering(autojump_clock: MockClock) -> None:
    with transitions_logged() as transitions:
        served, primary = await run(down=6.0, seconds=20)
    # Open at 4.5 for 5 s; the first request after 9.5 (t=10) is the probe, and it succeeds.
    assert served == expected(back=10.0, seconds=20)
    assert back_on_primary(served, 6.0) - 6.0 == 4.0 <= 15.0
    assert transitions.seen == [
        (4.5, "closed", "open"),
        (10.0, "open", "half_open"),
        (10.0, "half_open", "closed"),
    ]
    assert [a.arrived_at for a in primary.attempts] == [*TRIP_ATTEMPTS, *range(10, 20)]
    assert [a.status for a in primary.attempts] == [503] * 10 + [200] * 10


async def test_primary_down_60s_is_back_8s_after_recovering(autojump_clock: MockClock) -> None:
    with transitions_logged() as transitions:
        served, primary = await run(down=60.0, seconds=80)
    # Open at 4.5 for 5 s; failed probes at 10 (open 7.5 s, to 17.5), 18 (open 10 s: the
    # cap), 28, 38, 48, 58 (open to 68); the primary recovers at 60 and the probe at 68
    # succeeds: back 8 s after recovering. Never more than max_open_s (10 s) plus the wait
    # for the next request (here under 1 s) after the last failed probe.
    assert served == expected(back=68.0, seconds=80)
    assert back_on_primary(served, 60.0) - 60.0 == 8.0 <= 15.0
    probes = [10.0, 18.0, 28.0, 38.0, 48.0, 58.0]
    assert transitions.seen == [
        (4.5, "closed", "open"),
        *[step for t in probes for step in ((t, "open", "half_open"), (t, "half_open", "open"))],
        (68.0, "open", "half_open"),
        (68.0, "half_open", "closed"),
    ]
    assert [a.arrived_at for a in primary.attempts] == [*TRIP_ATTEMPTS, *probes, *range(68, 80)]
    assert [a.status for a in primary.attempts] == [503] * 16 + [200] * 12
