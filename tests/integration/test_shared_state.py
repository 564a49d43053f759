"""``[runtime] state = "redis://..."`` with real processes, a real redis-server and a fake
provider on loopback: one budget for every process, breakers seen by all, usage that outlives
them, and a runtime that keeps serving while Redis is slow or gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.testing import FakeProvider
from actors.testing._faults import FaultPlan, ServerError
from protocol._config import ConnectionConfig, RateLimitConfig, RuntimeConfig, RuntimeSettings
from protocol._messages import ChatRequest, Completion, Message
from supervisors import Runtime, open_runtime

from .conftest import RedisServer

WORKER = Path(__file__).resolve().parent / "_shared_worker.py"
RPM = 60
HAMMER_S = 12.0
SLACK_S = 0.5
"""Between its grant (on Redis's clock) and its arrival at the provider a request travels
through its process and the loopback: arrivals may bunch up by this much more than grants
(measured with 4 warm processes and Redis on 2 busy cores: ~0.1 s; the grants themselves fit
the bucket to the millisecond). A cold process's first request took ~1 s: the workers send
one before they report ready, and the check starts when they are told to go."""


class Worker:
    """One worker process (``_shared_worker.py``) and its output lines."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self._buffer = b""

    async def line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        with trio.move_on_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    break
                self._buffer += chunk
        if b"\n" not in self._buffer:
            pytest.fail(f"worker said nothing in {timeout}s; its log:\n{self.log.read_text()}")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def go(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")


async def run_workers(
    state: str,
    base_url: str,
    modes: list[tuple[str, float]],
    logs: Path,
    went: list[float] | None = None,
    clock: Any = trio.current_time,
) -> list[dict[str, Any]]:
    """Start one worker per mode, wait until all are READY, start them together and return
    what each printed (*went* gets the *clock* time they were told to go)."""
    workers = []
    try:
        for i, (mode, seconds) in enumerate(modes):
            log = logs / f"worker-{i}.log"
            with log.open("wb") as stderr:  # the child has its own copy
                process = await trio.lowlevel.open_process(
                    [sys.executable, str(WORKER), state, base_url, mode, str(seconds)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                )
            workers.append(Worker(process, log))
        for worker in workers:
            ready = await worker.line(120)
            assert ready.startswith("READY"), ready
        if went is not None:
            went.append(clock())
        for worker in workers:
            await worker.go()
        results = [json.loads(await w.line(max(s for _, s in modes) + 60)) for w in workers]
        for worker in workers:
            with trio.fail_after(30):
                assert await worker.process.wait() == 0, worker.log.read_text()
        return results
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()


def conforms(arrivals: list[float], capacity: int, per_second: float, slack: float) -> str:
    """'' when *arrivals* fit one token bucket (*capacity*, refilling *per_second*): every
    stretch from arrival i to arrival j holds at most capacity + rate x its length (+ slack);
    else the first stretch that does not."""
    times = sorted(arrivals)
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = capacity + per_second * (times[j] - times[i] + slack)
            if j - i + 1 > allowed:
                return f"{j - i + 1} requests in {times[j] - times[i]:.3f}s (allowed {allowed:.1f})"
    return ""


async def test_four_processes_hold_one_rpm_budget(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """4 processes, 8 tasks each, sending as fast as they are admitted for 12 s against RPM 60:
    the provider sees one token bucket's worth (60 at once, then one a second), not four."""
    fake = FakeProvider(seed=1)
    went: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        results = await run_workers(
            redis_server.url,
            fake.base_url("openai"),
            [("hammer", HAMMER_S)] * 4,
            tmp_path,
            went,
            fake.now,
        )
        nursery.cancel_scope.cancel()
    [go] = went
    warm = [a.arrived_at for a in fake.attempts if a.arrived_at < go]
    arrivals = [a.arrived_at for a in fake.attempts if a.arrived_at >= go]
    assert len(warm) == 4
    assert [r["state"] for r in results] == ["redis"] * 4
    served = sum(r["outcomes"].get("ok", 0) for r in results)
    assert served == len(arrivals)
    assert not any(set(r["outcomes"]) - {"ok"} for r in results), results
    # The budget was used (60 at once and about one a second after) ...
    assert len(arrivals) >= RPM - len(warm) + HAMMER_S / 2
    # ... and never exceeded, by all four together.
    assert conforms(arrivals, RPM, RPM / 60, SLACK_S) == ""
    assert len(arrivals) <= RPM + (max(arrivals) - min(arrivals) + SLACK_S) * RPM / 60


async def test_a_breaker_opened_by_one_process_is_seen_by_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    fake = FakeProvider(seed=1, plan=FaultPlan.always(ServerError(status=503), models=("boom",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        trip, *watchers = await run_workers(
            redis_server.url,
            fake.base_url("openai"),
            [("trip", 0.0), ("watch", 10.0), ("watch", 10.0)],
            tmp_path,
        )
        nursery.cancel_scope.cancel()
    assert trip["kinds"] == ["overloaded", "overloaded"]
    assert trip["breaker"] == "open"
    for seen in watchers:
        assert seen["seen_open_after"] is not None, seen
        assert seen["seen_open_after"] < 5.0
        assert seen["request"] == "circuit_open"
    # Only the process that tripped reached the provider.
    assert [a.model for a in fake.attempts] == ["boom", "boom"]


# ---------------------------------------------------------------------------- in process


def runtime_config(state: str, base_url: str, **settings: Any) -> RuntimeConfig:
    conn = ConnectionConfig(
        name="shared",
        provider="openai",
        base_url=base_url,
        default_model="m",
        rate_limit=RateLimitConfig(requests_per_minute=6000, tokens_per_minute=10_000_000),
    )
    return RuntimeConfig(
        connections={"shared": conn},
        runtime=RuntimeSettings(state=state, state_timeout_s=0.25, **settings),
    )


def hello() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content="hello there")])


async def serves(rt: Runtime, n: int) -> None:
    """*n* requests, each answered (never hung on the state) within 2 s."""
    for _ in range(n):
        with trio.fail_after(2):
            assert isinstance(await rt.chat(hello()), Completion)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the state changes in the background
            await trio.sleep(0.05)


def shared_tokens(rt: Runtime) -> tuple[int, int]:
    usage = rt.metrics().shared_usage.get("shared", {}).get("m")
    return (0, 0) if usage is None else (usage.input_tokens, usage.output_tokens)


def local_tokens(rt: Runtime) -> tuple[int, int]:
    return rt.metrics().tokens_by_connection("shared")


async def test_redis_going_away_keeps_requests_served_and_it_resyncs(
    redis_server: RedisServer,
) -> None:
    fake = FakeProvider(seed=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        async with open_runtime(runtime_config(redis_server.url, fake.base_url("openai"))) as rt:
            assert rt.health().state == "redis"
            await serves(rt, 3)
            # Redis hangs (SIGSTOP): requests are served; one waited at most the timeout.
            redis_server.pause()
            await serves(rt, 5)
            await until(lambda: not rt.state.startswith("redis"))
            assert rt.health().state.startswith("local (redis unreachable since ")
            assert rt.health().status == "ok"
            metrics = rt.metrics()
            assert metrics.state == rt.health().state
            assert "switchboard_shared_state_up 0" in metrics.prometheus()
            # It answers again: every token counted meanwhile reaches it, exactly once
            # (a batch that timed out while it hung ran after all and is not applied twice).
            redis_server.resume()
            await until(lambda: rt.state == "redis")
            await until(lambda: shared_tokens(rt) == local_tokens(rt))
            assert "switchboard_shared_state_up 1" in rt.metrics().prometheus()
            # Redis is gone (stopped): requests are served on local state ...
            redis_server.stop()
            await serves(rt, 3)
            await until(lambda: rt.state.startswith("local (redis unreachable"))
            await serves(rt, 3)
            # ... and when a (fresh, empty) Redis is back, the runtime syncs to it again.
            redis_server.start()
            await until(lambda: rt.state == "redis")
            await serves(rt, 2)
            await until(lambda: shared_tokens(rt) != (0, 0))
            assert rt.health().state == "redis"
        nursery.cancel_scope.cancel()


async def test_usage_totals_survive_restarts(redis_server: RedisServer) -> None:
    fake = FakeProvider(seed=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = runtime_config(redis_server.url, fake.base_url("openai"))
        async with open_runtime(config) as first:
            await serves(first, 4)
            used = local_tokens(first)
        async with open_runtime(config) as second:
            assert local_tokens(second) == (0, 0)
            await until(lambda: shared_tokens(second) == used)
            await serves(second, 1)
            await until(lambda: shared_tokens(second) != used)
            text = second.metrics().prometheus()
            labels = 'connection="shared",model="m",direction="in"'
            assert f"switchboard_shared_tokens_total{{{labels}}}" in text
        nursery.cancel_scope.cancel()


async def test_a_runtime_starts_and_serves_when_redis_is_unreachable(
    redis_server: RedisServer,
) -> None:
    fake = FakeProvider(seed=1)
    url = redis_server.url
    redis_server.stop()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        with trio.fail_after(10):
            async with open_runtime(runtime_config(url, fake.base_url("openai"))) as rt:
                assert rt.health().state.startswith("local (redis unreachable since ")
                await serves(rt, 3)
                redis_server.start()
                await until(lambda: rt.state == "redis")
                await serves(rt, 1)
        nursery.cancel_scope.cancel()
