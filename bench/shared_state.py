"""What shared state costs, and what it holds: ``[runtime] state = "redis://..."`` against the
in-process default, on one loopback server, in one run.

Why this benchmark: the design promises that sharing limits, breakers and usage through Redis
adds at most ~100 µs per request on loopback, and that several processes together hold a
limit as one. Both are measured here, never asserted in tests.

1. **Cost per request.** Two runtimes in this process, identical but for ``[runtime] state``
   (``local`` and a ``redis-server`` this script starts on a free loopback port), one OpenAI
   connection with limits on (RPM, TPM, concurrency: every kind of shared draw), against
   ``bench/_loopback.py`` in a child process (its CPU, and Redis's, are not counted). Requests
   go through the public path (``rt.chat``) at concurrency 1 and 32, rounds interleave the two
   runtimes, the best round is kept. Reported: CPU µs per request of this process
   (``time.process_time``) and wall µs per request, for each, and what Redis adds. Requests
   draw from leases (see ``actors._shared_limits``), so most need no round trip; the
   background syncs (one call per connection every 0.1 s while busy) are counted too.
2. **The rate a limit holds to.** 4 worker processes (this script with ``--worker``), 8 tasks
   each, send requests as fast as they are admitted for ``--seconds`` against RPM
   ``--rpm`` on the same connection name and Redis. A token bucket admits ``rpm`` at once,
   then ``rpm`` per minute: the requests completed beyond the first ``rpm``, per minute of
   the run, are the rate held, reported against the limit (1.0 is exact; without shared
   state it would be ~4).

Run: ``python bench/shared_state.py`` (about a minute; ``--quick`` for a rough look). Needs
``redis-server`` (``sh tests/system-deps.sh``). The last line is a JSON object:
``added_cpu_us_c1``/``_c32`` and ``added_wall_us_c1``/``_c32`` (shared minus local),
``cpu_ratio_c1``/``_c32``, ``rate_per_min``, ``rate_limit``, ``rate_ratio``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import LoopbackServer

from protocol._config import (
    ConnectionConfig,
    RateLimitConfig,
    RetryConfig,
    RuntimeConfig,
    RuntimeSettings,
    Secret,
)
from protocol._messages import ChatRequest, Message
from supervisors import Runtime, open_runtime

PROMPT = "Write one sentence about circuit breakers."
CONCURRENCY = (1, 32)
COUNTS = {1: 600, 32: 1280}
ROUNDS = 3


class BenchError(Exception):
    """The benchmark cannot run or a request failed: the figures would be meaningless."""


# --------------------------------------------------------------------------- redis-server


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, for the length of the run."""

    def __init__(self) -> None:
        path = shutil.which("redis-server")
        if path is None:
            raise BenchError("redis-server is not installed: sh tests/system-deps.sh")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._proc = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise BenchError("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=5)


# --------------------------------------------------------------------------- configs


def config(base_url: str, state: str, rpm: int, tpm: int, concurrency: int) -> RuntimeConfig:
    conn = ConnectionConfig(
        name="bench",
        provider="openai",
        base_url=base_url,
        api_key=Secret("sk-bench-0123456789abcdef"),
        default_model="m",
        serves=["*"],
        timeout=300.0,
        retry=RetryConfig(max_attempts=1),
        rate_limit=RateLimitConfig(
            requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrency
        ),
    )
    return RuntimeConfig(
        connections={"bench": conn}, runtime=RuntimeSettings(state=state, shutdown_timeout_s=2)
    )


def request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=PROMPT)], max_tokens=256)


# --------------------------------------------------------------------------- 1. cost


async def per_request(rt: Runtime, concurrency: int, count: int) -> tuple[float, float]:
    """(CPU µs, wall µs) of this process per request, *count* requests over *concurrency*
    tasks."""
    per_task = max(1, count // concurrency)

    async def work() -> None:
        for _ in range(per_task):
            await rt.chat(request())  # raises RequestFailed on a failure

    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(work)
    n = per_task * concurrency
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


@asynccontextmanager
async def runtimes(base_url: str, redis_url: str) -> AsyncIterator[dict[str, Runtime]]:
    # Limits a real key has (OpenAI tier 4-ish), far above what the run uses: every request
    # draws a request, tokens and a slot, and nothing ever waits.
    limits = {"rpm": 100_000, "tpm": 100_000_000, "concurrency": 64}
    async with (
        open_runtime(config(base_url, "local", **limits)) as local,
        open_runtime(config(base_url, redis_url, **limits)) as shared,
    ):
        if shared.state != "redis":
            raise BenchError(f"the shared runtime is not on Redis: {shared.state}")
        yield {"local": local, "redis": shared}


async def measure_cost(
    base_url: str, redis_url: str, scale: float, rounds: int
) -> dict[int, dict[str, tuple[float, float]]]:
    results: dict[int, dict[str, tuple[float, float]]] = {}
    async with runtimes(base_url, redis_url) as rts:
        for concurrency in CONCURRENCY:
            count = max(concurrency, int(COUNTS[concurrency] * scale))
            for rt in rts.values():  # warm up: connections, clients, leases
                await per_request(rt, concurrency, concurrency * 4)
            best = dict.fromkeys(rts, (math.inf, math.inf))
            for _ in range(rounds):
                for name, rt in rts.items():
                    cpu, wall = await per_request(rt, concurrency, count)
                    best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
            results[concurrency] = best
            print(
                f"  c={concurrency}: "
                + "  ".join(f"{n} cpu={c:.0f}µs wall={w:.0f}µs" for n, (c, w) in best.items()),
                flush=True,
            )
        state = rts["redis"].state
        if state != "redis":
            raise BenchError(f"Redis was not reachable throughout: {state}")
    return results


# --------------------------------------------------------------------------- 2. rate


async def worker(base_url: str, redis_url: str, rpm: int, seconds: float) -> None:
    """One of the 4 processes: warm up, say READY, wait for a line, then send for *seconds*
    and print the completion times (time.monotonic, the same clock in every process)."""
    done: list[float] = []
    async with open_runtime(config(base_url, redis_url, rpm, 100_000_000, 64)) as rt:
        await rt.chat(request())
        print("READY", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(8):

                    async def loop() -> None:
                        while True:
                            await rt.chat(request())
                            done.append(time.monotonic())

                    nursery.start_soon(loop)
        print(json.dumps({"done": done, "state": rt.state}), flush=True)


def measure_rate(base_url: str, redis_url: str, rpm: int, seconds: float) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", base_url, redis_url, str(rpm), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith("READY"):
                raise BenchError(f"a worker did not start: {line!r}")
        go = time.monotonic()  # the workers' clock too (CLOCK_MONOTONIC is system-wide)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p in procs:
            assert p.stdout is not None
            reports.append(json.loads(p.stdout.readline()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.wait(timeout=30)
    if any(r["state"] != "redis" for r in reports):
        raise BenchError(f"a worker lost Redis: {[r['state'] for r in reports]}")
    times = sorted(t for r in reports for t in r["done"])
    # A token bucket admits its capacity at once, then its rate: beyond the burst of rpm,
    # what was completed over the run is the rate held (a burst that takes a while to go
    # out overlaps the refill, so the rate is measured from the start, not from the burst).
    elapsed = max(times[-1], go + seconds) - go if times else seconds
    rate = (len(times) - rpm) / elapsed * 60
    return {
        "completed": len(times),
        "allowed": rpm + rpm / 60 * elapsed,
        "rate_per_min": rate,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, base_url, redis_url, rpm, seconds = sys.argv
        trio.run(worker, base_url, redis_url, int(rpm), float(seconds))
        return
    parser = argparse.ArgumentParser(description="Cost and accuracy of shared state (Redis).")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--rpm", type=int, default=600, help="limit for the 4-process run")
    parser.add_argument("--seconds", type=float, default=None, help="length of that run")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    rounds = args.rounds or (2 if args.quick else ROUNDS)
    seconds = args.seconds or (6.0 if args.quick else 15.0)

    started = time.perf_counter()
    server = LoopbackServer(0.0)
    redis = RedisServer()
    try:
        print(f"loopback server on {server.base_url}; redis on {redis.url}", flush=True)
        print(f"1. cost per request (rt.chat, best of {rounds} rounds):", flush=True)
        cost = trio.run(measure_cost, server.base_url, redis.url, scale, rounds)
        print(f"2. 4 processes x 8 tasks for {seconds:g}s against RPM {args.rpm}:", flush=True)
        rate = measure_rate(server.base_url, redis.url, args.rpm, seconds)
    finally:
        redis.close()
        server.close()
    summary: dict[str, Any] = {}
    print()
    print("| concurrency | local CPU µs | redis CPU µs | added CPU µs | ratio | added wall µs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for concurrency, row in cost.items():
        (lc, lw), (rc, rw) = row["local"], row["redis"]
        summary[f"added_cpu_us_c{concurrency}"] = round(rc - lc, 1)
        summary[f"added_wall_us_c{concurrency}"] = round(rw - lw, 1)
        summary[f"cpu_ratio_c{concurrency}"] = round(rc / lc, 3)
        print(
            f"| {concurrency} | {lc:.0f} | {rc:.0f} | {rc - lc:.0f} | {rc / lc:.3f} | "
            f"{rw - lw:.0f} |"
        )
    summary["rate_per_min"] = round(rate["rate_per_min"], 1)
    summary["rate_limit"] = args.rpm
    summary["rate_ratio"] = round(rate["rate_per_min"] / args.rpm, 3)
    summary["completed"] = rate["completed"]
    print(
        f"\n4 processes: {rate['completed']} requests in {seconds:g}s (one bucket allows "
        f"{rate['allowed']:.0f}); beyond the burst of {args.rpm}: {rate['rate_per_min']:.1f}/min "
        f"against a limit of {args.rpm}/min (ratio {summary['rate_ratio']}; ~4 without shared "
        "state)"
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
