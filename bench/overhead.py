"""CPU cost of the public path (`open_runtime` → ``rt.chat`` / ``rt.stream``) against raw httpx,
on one loopback server, in one run.

Why this benchmark: the design promises that going through the runtime (router, mailbox,
admission by the rate limiter, breaker permission, retry bookkeeping, typed decoding,
metrics) costs at most 1.10x the CPU of the obvious hand-written httpx code per request, and
no more than it per stream chunk. A promise about overhead is only worth something measured
against the alternative on the same machine in the same run, and on the path users call, so
this script measures exactly that.

What is measured: CPU seconds of *this* process (``time.process_time``; the server runs in
its own process, ``bench/_loopback.py``, so its CPU is never counted) divided by the number of
requests, for every configuration:

- shapes: a non-streamed chat completion, and streams of 20 and of 100 content chunks (each
  chunk paced by the server so it arrives in its own socket read, as tokens do);
- concurrency 1 (one task, requests back to back) and 32 (32 tasks sharing the work);
- clients:
  ``raw``      ``httpx.AsyncClient`` on trio, the obvious way: ``client.post(url, json=...)``
               then ``json.loads(resp.content)``; for streams ``client.stream(...)``,
               ``aiter_bytes``, split lines, ``json.loads`` of each ``data:`` payload. One
               client per task (at concurrency 32 a shared client's pool contends and costs
               more, encode/httpx#3215: the cheaper opponent is the fair one). The baseline.
  ``runtime``  the public path: a runtime from ``open_runtime(config)`` with one OpenAI
               connection (breaker, retry and limiter on, limits far above the run);
               ``rt.chat(...)`` / ``async with rt.stream(...)`` read to the end.
  ``conn``     the runtime's `Connection` called directly (``conn.chat`` / ``conn.stream``):
               the provider actor alone, without the router - where the cost is.
  ``openai``   the official ``openai`` SDK (``AsyncOpenAI``, one per task; it runs on trio
               through anyio): ``chat.completions.create(...)``, streams iterated to the end.

Every client is created and warmed up (connections open) before measuring. Rounds interleave
the clients so a disturbance on the machine hurts them alike; the best round is kept. The
per-chunk marginal cost is ``(cost of a 100-chunk stream - cost of a 20-chunk stream) / 80``.

Run: ``python bench/overhead.py`` (a few minutes on 2 idle cores; ``--quick`` for a rough
look; ``--profile stream100 [--concurrency 32] [--target conn]`` to cProfile one path). The
last line printed is a JSON object for scripts: ``request_ratio`` and ``chunk_ratio`` are the
runtime's worst case over the configurations against raw httpx; ``conn_*`` and ``openai_*``
the same figures for the connection alone and for the openai SDK.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import pstats
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors._provider import Connection
from protocol._config import ConnectionConfig, RateLimitConfig, RuntimeConfig, Secret
from protocol._messages import ChatRequest, Completion, Message
from supervisors import Runtime, open_runtime

SHAPES = (0, 20, 100)  # content chunks; 0 = not streamed
CONCURRENCY = (1, 32)
PROMPT = "Write one sentence about circuit breakers."
API_KEY = "sk-bench-0123456789abcdef"
MAX_TOKENS = 256
VARIANTS = ("raw", "runtime", "conn", "openai")

# Requests per measurement: (shape, concurrency) -> count, full run. --quick divides by 4.
COUNTS = {
    (0, 1): 400,
    (0, 32): 960,
    (20, 1): 160,
    (20, 32): 480,
    (100, 1): 60,
    (100, 32): 192,
}
ROUNDS = 3

Worker = Callable[[int, int], Awaitable[None]]  # (task index, requests) -> None


class BenchError(Exception):
    """A request in the benchmark did not succeed: the figures would be meaningless."""


# --------------------------------------------------------------------------- the server


class LoopbackServer:
    """``bench/_loopback.py`` in a child process; it exits when we close its stdin."""

    def __init__(self, gap_us: float) -> None:
        script = Path(__file__).resolve().parent / "_loopback.py"
        self._proc = subprocess.Popen(
            [sys.executable, str(script), "--gap-us", str(gap_us)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.close()
            raise BenchError(f"loopback server did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# --------------------------------------------------------------------------- (a) raw httpx


def _raw_payload(shape: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": f"chunks-{shape}",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    if shape:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


async def raw_request(client: httpx.AsyncClient, url: str, shape: int) -> int:
    """One request the obvious way; returns the number of JSON documents decoded."""
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "accept": "text/event-stream" if shape else "application/json",
    }
    if not shape:
        resp = await client.post(url, json=_raw_payload(shape), headers=headers)
        if resp.status_code != 200:
            raise BenchError(f"raw: HTTP {resp.status_code}")
        json.loads(resp.content)
        return 1
    decoded = 0
    done = False
    async with client.stream("POST", url, json=_raw_payload(shape), headers=headers) as resp:
        if resp.status_code != 200:
            raise BenchError(f"raw: HTTP {resp.status_code}")
        rest = b""
        # Read to the end of the body even after [DONE]: leaving earlier makes httpx close
        # the connection, and the next request pays for a new one.
        async for data in resp.aiter_bytes():
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data: "):
                    payload = line[6:]
                    if payload == b"[DONE]":
                        done = True
                    elif not done:
                        json.loads(payload)
                        decoded += 1
    if not done:
        raise BenchError("raw: stream ended without [DONE]")
    return decoded


def raw_worker(clients: list[httpx.AsyncClient], url: str, shape: int) -> Worker:
    """Task *i* uses ``clients[i]``: one client per task."""

    async def work(i: int, count: int) -> None:
        client = clients[i]
        for _ in range(count):
            await raw_request(client, url, shape)

    return work


# --------------------------------------------------------------------------- (b) the runtime


def runtime_config(base_url: str) -> RuntimeConfig:
    """One OpenAI connection serving ``chunks-*``: breaker, retry and limiter on (defaults),
    limits far above what the bench uses."""
    conn = ConnectionConfig(
        name="bench",
        provider="openai",
        base_url=base_url,
        api_key=Secret(API_KEY),
        serves=["chunks-*"],
        rate_limit=RateLimitConfig(
            requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=64
        ),
    )
    return RuntimeConfig(connections={"bench": conn})


def _request(shape: int) -> ChatRequest:
    return ChatRequest(
        model=f"chunks-{shape}",
        messages=[Message(role="user", content=PROMPT)],
        max_tokens=MAX_TOKENS,
    )


def runtime_worker(rt: Runtime, shape: int) -> Worker:
    async def work(i: int, count: int) -> None:
        for _ in range(count):
            request = _request(shape)
            if not shape:
                await rt.chat(request)  # raises RequestFailed on a failure
                continue
            async with rt.stream(request) as stream:
                async for _ in stream:
                    pass
            if not isinstance(stream.result, Completion):
                raise BenchError(f"runtime: {stream.result}")

    return work


def conn_worker(conn: Connection, shape: int) -> Worker:
    async def work(i: int, count: int) -> None:
        for _ in range(count):
            request = _request(shape)
            if not shape:
                result = await conn.chat(request)
                if not isinstance(result, Completion):
                    raise BenchError(f"conn: {result}")
                continue
            async with conn.stream(request) as stream:
                async for _ in stream:
                    pass
            if not isinstance(stream.result, Completion):
                raise BenchError(f"conn: {stream.result}")

    return work


# --------------------------------------------------------------------------- (c) openai SDK


def openai_worker(clients: list[Any], shape: int) -> Worker:
    """The official SDK, one ``AsyncOpenAI`` per task."""

    async def work(i: int, count: int) -> None:
        client = clients[i]
        messages = [{"role": "user", "content": PROMPT}]
        for _ in range(count):
            if not shape:
                await client.chat.completions.create(
                    model="chunks-0", messages=messages, max_tokens=MAX_TOKENS
                )
                continue
            stream = await client.chat.completions.create(
                model=f"chunks-{shape}",
                messages=messages,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass

    return work


# --------------------------------------------------------------------------- measuring


async def cpu_per_request(worker: Worker, concurrency: int, requests: int) -> float:
    """CPU µs of this process per request, *requests* split over *concurrency* tasks."""
    per_task = max(1, requests // concurrency)
    gc.collect()
    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(worker, i, per_task)
    return (time.process_time() - start) / (per_task * concurrency) * 1e6


class Clients:
    """Everything measured, created once and kept warm: raw clients and openai clients (one
    per task), and a runtime."""

    def __init__(self, base_url: str, rt: Runtime, variants: tuple[str, ...]) -> None:
        self.url = f"{base_url}/chat/completions"
        self.rt = rt
        self.names = variants
        tasks = max(CONCURRENCY)
        self.raw = [httpx.AsyncClient() for _ in range(tasks)] if "raw" in variants else []
        self.openai: list[Any] = []
        if "openai" in variants:
            import openai  # only when measured (0.5 s to import)

            self.openai = [
                openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url) for _ in range(tasks)
            ]

    def variants(self, shape: int) -> dict[str, Worker]:
        make: dict[str, Callable[[], Worker]] = {
            "raw": lambda: raw_worker(self.raw, self.url, shape),
            "runtime": lambda: runtime_worker(self.rt, shape),
            "conn": lambda: conn_worker(self.rt.connection("bench"), shape),
            "openai": lambda: openai_worker(self.openai, shape),
        }
        return {name: make[name]() for name in self.names}

    async def aclose(self) -> None:
        for client in self.raw:
            await client.aclose()
        for sdk in self.openai:
            await sdk.close()


@asynccontextmanager
async def opened(base_url: str, variants: tuple[str, ...]) -> AsyncIterator[Clients]:
    async with open_runtime(runtime_config(base_url)) as rt:
        clients = Clients(base_url, rt, variants)
        try:
            yield clients
        finally:
            await clients.aclose()


Results = dict[tuple[int, int], dict[str, float]]  # (shape, concurrency) -> variant -> µs


async def run_all(
    base_url: str,
    *,
    scale: float,
    rounds: int,
    variants: tuple[str, ...],
    log: Callable[[str], None],
) -> Results:
    """Measure every configuration, each variant once per round, interleaved."""
    results: Results = {}
    async with opened(base_url, variants) as clients:
        for concurrency in CONCURRENCY:
            for shape in SHAPES:
                count = max(concurrency, int(COUNTS[shape, concurrency] * scale))
                workers = clients.variants(shape)
                for worker in workers.values():  # warm up: open connections, caches
                    await cpu_per_request(worker, concurrency, concurrency * 2)
                best = dict.fromkeys(workers, math.inf)
                for _ in range(rounds):
                    for name, worker in workers.items():
                        us = await cpu_per_request(worker, concurrency, count)
                        best[name] = min(best[name], us)
                results[shape, concurrency] = best
                log(f"  {_label(shape)} c={concurrency}: " + _fmt(best))
    return results


def _label(shape: int) -> str:
    return "chat" if not shape else f"stream{shape}"


def _fmt(row: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.0f}µs" for k, v in row.items())


# --------------------------------------------------------------------------- report


def _prefix(name: str) -> str:
    """The JSON key prefix of a variant's ratios: none for the runtime (the headline)."""
    return "" if name == "runtime" else f"{name}_"


def summarize(results: Results) -> dict[str, Any]:
    """Ratios per configuration against ``raw``, per-chunk marginal costs, and the worst
    case of every variant (``request_ratio`` / ``chunk_ratio`` for the runtime,
    ``conn_request_ratio``, ``openai_chunk_ratio``... for the others)."""
    figures: dict[str, Any] = {}
    worst: dict[str, float] = {}

    def note(key: str, ratio: float) -> None:
        worst[key] = max(worst.get(key, 0.0), ratio)

    for concurrency in CONCURRENCY:
        cost: dict[str, dict[int, float]] = {}
        for shape in SHAPES:
            row = results[shape, concurrency]
            entry: dict[str, Any] = {f"{k}_us": round(v, 1) for k, v in row.items()}
            for name, us in row.items():
                cost.setdefault(name, {})[shape] = us
                if name != "raw":
                    ratio = us / row["raw"]
                    entry[f"{name}_ratio"] = round(ratio, 3)
                    note(f"{_prefix(name)}request_ratio", ratio)
            figures[f"{_label(shape)}_c{concurrency}"] = entry
        chunk: dict[str, Any] = {}
        raw_chunk = (cost["raw"][100] - cost["raw"][20]) / 80
        for name, by_shape in cost.items():
            per_chunk = (by_shape[100] - by_shape[20]) / 80
            chunk[f"{name}_us"] = round(per_chunk, 2)
            if name != "raw":
                chunk[f"{name}_ratio"] = round(per_chunk / raw_chunk, 3)
                note(f"{_prefix(name)}chunk_ratio", per_chunk / raw_chunk)
        figures[f"chunk_c{concurrency}"] = chunk
    head = {k: round(worst[k], 3) for k in sorted(worst, key=lambda k: (k.count("_"), k))}
    return {**head, **figures}


def print_table(summary: dict[str, Any], variants: tuple[str, ...]) -> None:
    others = [v for v in variants if v != "raw"]
    print()
    print(
        f"{'configuration':<16}{'raw':>9}"
        + "".join(f"{name:>10}{'ratio':>7}" for name in others)
        + "   (CPU µs per request)"
    )
    for concurrency in CONCURRENCY:
        for shape in SHAPES:
            row = summary[f"{_label(shape)}_c{concurrency}"]
            line = f"{_label(shape) + f' c={concurrency}':<16}{row['raw_us']:>9.0f}"
            for name in others:
                line += f"{row[f'{name}_us']:>10.0f}{row[f'{name}_ratio']:>7.2f}"
            print(line)
    for concurrency in CONCURRENCY:
        c = summary[f"chunk_c{concurrency}"]
        line = f"{f'per chunk c={concurrency}':<16}{c['raw_us']:>9.1f}"
        for name in others:
            line += f"{c[f'{name}_us']:>10.1f}{c[f'{name}_ratio']:>7.2f}"
        print(line)
    print()
    if "request_ratio" in summary:
        print(
            f"runtime: worst request ratio {summary['request_ratio']:.3f} (target ≤ 1.10), "
            f"worst chunk ratio {summary['chunk_ratio']:.3f} (target ≤ 1.00)"
        )
    for name in others:
        if name != "runtime":
            print(
                f"{name}: worst request ratio {summary[f'{name}_request_ratio']:.3f}, "
                f"worst chunk ratio {summary[f'{name}_chunk_ratio']:.3f}"
            )


# --------------------------------------------------------------------------- profiling


async def profile(base_url: str, target: str, shape: int, concurrency: int, requests: int) -> None:
    """cProfile one path only (after a warm-up) and print the top functions."""
    async with opened(base_url, (target,)) as clients:
        worker = clients.variants(shape)[target]
        await cpu_per_request(worker, concurrency, concurrency * 4)
        profiler = cProfile.Profile()
        profiler.enable()
        await cpu_per_request(worker, concurrency, requests)
        profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(45)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU overhead of the runtime vs raw httpx.")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--gap-us", type=float, default=100.0, help="server pause before each stream chunk"
    )
    parser.add_argument(
        "--only",
        default=",".join(VARIANTS),
        help=f"comma-separated variants to measure (raw is always measured): {VARIANTS}",
    )
    parser.add_argument(
        "--profile",
        choices=["chat", "stream20", "stream100"],
        help="cProfile one path for one shape instead of benchmarking",
    )
    parser.add_argument("--target", choices=VARIANTS, default="runtime", help="for --profile")
    parser.add_argument("--concurrency", type=int, default=1, help="for --profile")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    rounds = args.rounds or (2 if args.quick else ROUNDS)
    chosen = {v.strip() for v in args.only.split(",") if v.strip()} | {"raw"}
    unknown = chosen - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    variants = tuple(v for v in VARIANTS if v in chosen)

    server = LoopbackServer(args.gap_us)
    try:
        if args.profile:
            shape = {"chat": 0, "stream20": 20, "stream100": 100}[args.profile]
            n = 200 if shape == 0 else 400 // max(1, shape // 10)
            trio.run(profile, server.base_url, args.target, shape, args.concurrency,
                     n * args.concurrency)  # fmt: skip
            return
        print(
            f"loopback server on {server.base_url}; {', '.join(variants)}; "
            f"{rounds} rounds, best kept",
            flush=True,
        )
        started = time.perf_counter()
        results = trio.run(
            lambda: run_all(
                server.base_url,
                scale=scale,
                rounds=rounds,
                variants=variants,
                log=lambda s: print(s, flush=True),
            )
        )
    finally:
        server.close()
    summary = summarize(results)
    print_table(summary, variants)
    print(f"({time.perf_counter() - started:.0f} s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
