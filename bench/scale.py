"""Scale: a runtime with 1,000 connections - start-up time, memory per connection, and memory
under 100,000 requests (no growth once warm).

Why this benchmark: a service that embeds the runtime may configure hundreds of connections
(one per provider, region, key and model family). Each is a supervised actor with its own
mailbox, breaker, limiter, metrics and HTTP clients; what that costs at start-up and whether
anything grows with the number of requests served (logs, histories, per-request state that is
never freed) is invisible in a test with three connections.

What runs: ``open_runtime`` with N connections (default 1,000), each behind its own in-memory
`FakeTransport` (no sockets). The transports use a canned core: the fault kit's
`ProviderCore` renders one healthy OpenAI answer once, and every request replays it without
adding to an attempt log (the real core keeps one record per attempt, which would be the
bench's own leak). Requests are spread round-robin over the connections by a pool of worker
tasks; each is pinned to its connection (``"c0042/m"``) so model resolution is O(1).

What is printed:

- start-up: wall seconds for ``start_runtime`` (every actor started under the supervisor) and
  memory per connection (tracemalloc: Python allocations made by the start-up, divided by
  N; also the RSS delta);
- warm-up: memory per connection after every connection served one request (each has now
  made its HTTP client);
- steady state: RSS and live Python objects (after ``gc.collect()``) after the warm-up, after
  half the requests and after all of them - "no growth" means the last two agree;
- resolution cost: CPU per request resolving a model by name (a scan over every
  connection) versus pinned, on a sample.

The last line is a JSON object of the figures. Run: ``python bench/scale.py`` (a minute or
two on 2 cores); ``--quick`` for 20,000 requests; ``--connections`` / ``--requests`` to vary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.testing._core import ProviderCore
from actors.testing._script import Script
from actors.testing._transport import FakeTransport
from protocol._config import ConnectionConfig, RetryConfig, RuntimeConfig, Secret
from protocol._messages import ChatRequest, Message
from supervisors._runtime import Runtime, start_runtime


class CannedCore:
    """A `ScriptSource` that answers every request with one pre-rendered healthy script and
    keeps no attempt log (so the bench measures the runtime, not the fake's history)."""

    def __init__(self, script: Script) -> None:
        self._script = script

    def respond(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        wall: float,
    ) -> Script:
        return self._script

    def finish(self, attempt: int, *, outcome: str, now: float, bytes_sent: int) -> None:
        return None


def canned_script() -> Script:
    core = ProviderCore(answer_tokens=12)
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    script = core.respond(
        method="POST",
        path="/v1/chat/completions",
        query="",
        headers={"content-type": "application/json"},
        body=body,
        now=0.0,
        wall=time.time(),
    )
    assert script.fault == "healthy", script.fault
    return Script(steps=script.steps, attempt=0, fault="healthy")


def config(n: int) -> RuntimeConfig:
    key = Secret("sk-bench")
    retry = RetryConfig(max_attempts=1)
    connections = {
        f"c{i:04d}": ConnectionConfig(
            name=f"c{i:04d}",
            provider="openai",
            base_url="http://fake/v1",
            api_key=key,
            default_model=f"m{i:04d}",
            retry=retry,
        )
        for i in range(n)
    }
    return RuntimeConfig(connections=connections)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> tuple[int, int]:
    """Collect garbage; return (RSS bytes, live objects tracked by the gc)."""
    gc.collect()
    return rss_bytes(), len(gc.get_objects())


MESSAGES = [Message(role="user", content="hi")]


async def drive(rt: Runtime, names: list[str], start: int, count: int, workers: int) -> None:
    """*count* requests, round-robin over *names* starting at *start*, by *workers* tasks."""
    next_index = start
    end = start + count

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            i = next_index
            next_index += 1
            name = names[i % len(names)]
            await rt.chat(ChatRequest(model=f"{name}/m", messages=MESSAGES, max_tokens=16))

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


async def resolution_cost(rt: Runtime, names: list[str], sample: int) -> dict[str, float]:
    """CPU microseconds per request: by default-model name (scan) vs pinned."""
    rng = random.Random(0)
    picks = [rng.randrange(len(names)) for _ in range(sample)]
    out: dict[str, float] = {}
    passes = (("pinned", "{n}/m"), ("by_name", "m{i:04d}"), ("by_name_warm", "m{i:04d}"))
    for label, model in passes:  # the router caches resolutions: the second pass is warm
        t0 = time.process_time()
        for i in picks:
            name = names[i]
            await rt.chat(ChatRequest(model=model.format(n=name, i=i), messages=MESSAGES))
        out[label] = (time.process_time() - t0) / sample * 1e6
    return out


async def main(args: argparse.Namespace) -> dict[str, float | int | str]:
    n, total = args.connections, args.requests
    cfg = config(n)
    script = canned_script()
    transports = {name: FakeTransport(core=CannedCore(script)) for name in cfg.connections}
    names = list(cfg.connections)
    figures: dict[str, float | int | str] = {"connections": n, "requests": total}

    rss0, _ = settle()
    tracemalloc.start()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        rt = await start_runtime(cfg, nursery, transports=transports, rng=random.Random(0))
        startup = time.perf_counter() - t0
        traced_start, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss1, _ = settle()
        figures["startup_s"] = round(startup, 3)
        figures["startup_bytes_per_connection"] = traced_start // n
        figures["startup_rss_bytes_per_connection"] = (rss1 - rss0) // n
        print(f"start-up of {n} connections: {startup:.3f} s")
        print(
            f"  memory per connection: {traced_start / n / 1024:.1f} KiB traced, "
            f"{(rss1 - rss0) / n / 1024:.1f} KiB RSS"
        )

        t1 = time.perf_counter()
        await drive(rt, names, 0, n, args.workers)  # every connection once: clients made
        rss_warm, objects_warm = settle()
        figures["warm_rss_bytes_per_connection"] = (rss_warm - rss0) // n
        print(
            f"after one request per connection ({time.perf_counter() - t1:.2f} s): "
            f"{(rss_warm - rss0) / n / 1024:.1f} KiB RSS per connection"
        )

        half = total // 2
        t2 = time.perf_counter()
        await drive(rt, names, n, half, args.workers)
        rss_half, objects_half = settle()
        await drive(rt, names, n + half, total - half, args.workers)
        rss_full, objects_full = settle()
        elapsed = time.perf_counter() - t2
        figures["requests_per_s"] = round(total / elapsed)
        figures["rss_warm_mb"] = round(rss_warm / 2**20, 1)
        figures["rss_half_mb"] = round(rss_half / 2**20, 1)
        figures["rss_full_mb"] = round(rss_full / 2**20, 1)
        figures["growth_half_to_full_kb"] = (rss_full - rss_half) // 1024
        figures["objects_warm"] = objects_warm
        figures["objects_half"] = objects_half
        figures["objects_full"] = objects_full
        print(f"{total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s)")
        print(
            f"  RSS: warm {rss_warm / 2**20:.1f} MiB, after {half}: {rss_half / 2**20:.1f} MiB, "
            f"after {total}: {rss_full / 2**20:.1f} MiB "
            f"(growth {(rss_full - rss_half) / 1024:.0f} KiB)"
        )
        print(f"  live objects: warm {objects_warm}, half {objects_half}, full {objects_full}")

        costs = await resolution_cost(rt, names, args.sample)
        figures["us_per_request_pinned"] = round(costs["pinned"], 1)
        figures["us_per_request_by_name"] = round(costs["by_name"], 1)
        figures["us_per_request_by_name_warm"] = round(costs["by_name_warm"], 1)
        print(
            f"CPU per request: pinned {costs['pinned']:.0f} us, by model name "
            f"{costs['by_name']:.0f} us the first time (a scan over {n} connections), "
            f"{costs['by_name_warm']:.0f} us once resolved (cached)"
        )
        stats = rt.metrics()
        served = sum(s.completions for s in stats.connections.values())
        figures["completions"] = served
        assert served == n + total + 3 * args.sample, served

        t3 = time.perf_counter()
        await rt.aclose()
        figures["shutdown_s"] = round(time.perf_counter() - t3, 3)
        print(f"shutdown: {figures['shutdown_s']} s")
        nursery.cancel_scope.cancel()
    return figures


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="20,000 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 20_000)
        args.sample = min(args.sample, 500)
    return args


if __name__ == "__main__":
    figures = trio.run(main, parse())
    print(json.dumps(figures))
