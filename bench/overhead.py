"""CPU cost of a `ProviderActor` request against raw httpx, on one loopback server, one run.

Why this benchmark: the design promises that going through a provider actor (mailbox,
admission by the rate limiter, breaker permission, retry bookkeeping, typed decoding, metrics)
costs at most 1.10x the CPU of the obvious hand-written httpx code per request, and no more
than it per stream chunk. A promise about overhead is only worth something measured against the
alternative on the same machine in the same run, so this script measures both.

What is measured: CPU seconds of *this* process (``time.process_time``; the server runs in
its own process, ``bench/_loopback.py``, so its CPU is never counted) divided by the number of
requests, for every configuration:

- shapes: a non-streamed chat completion, and streams of 20 and of 100 content chunks (each
  chunk paced by the server so it arrives in its own socket read, as tokens do);
- concurrency 1 (one task, requests back to back) and 32 (32 tasks sharing the work);
- clients:
  (a) raw ``httpx.AsyncClient`` on trio: ``client.post(url, json=...)`` then
      ``json.loads(resp.content)``; for streams ``client.stream(...)``, ``aiter_bytes``, split
      lines, ``json.loads`` of each ``data:`` payload. At concurrency 32 both one shared
      client and one client per task are measured (DESIGN: a shared pool contends), and the
      cheaper of the two per configuration is the baseline - the fairest opponent.
  (b) a `Connection` served by a `ProviderActor` with breaker, retry and limiter on (limits
      far above what the run uses): ``conn.chat(...)`` / ``conn.stream(...)`` to the end.

Every client is created and warmed up (connections open) before measuring. Rounds interleave
the clients so a disturbance on the machine hurts them alike; the best round is kept. The
per-chunk marginal cost is ``(cost of a 100-chunk stream - cost of a 20-chunk stream) / 80``.

Run: ``python bench/overhead.py`` (about 2 minutes on 2 idle cores; ``--quick`` for a rough
look; ``--profile stream100`` to cProfile the actor path). The last line printed is a JSON
object for scripts, with ``request_ratio`` and ``chunk_ratio`` the worst case over the
configurations.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import json
import math
import pstats
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors._provider import Connection, ProviderActor
from protocol._config import ConnectionConfig, RateLimitConfig, Secret
from protocol._messages import ChatRequest, Completion, Message

SHAPES = (0, 20, 100)  # content chunks; 0 = not streamed
CONCURRENCY = (1, 32)
PROMPT = "Write one sentence about circuit breakers."
API_KEY = "sk-bench-0123456789abcdef"
MAX_TOKENS = 256

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
    """Task *i* uses ``clients[i % len(clients)]``: one shared client, or one per task."""

    async def work(i: int, count: int) -> None:
        client = clients[i % len(clients)]
        for _ in range(count):
            await raw_request(client, url, shape)

    return work


# --------------------------------------------------------------------------- (b) the actor


def actor_config(base_url: str) -> ConnectionConfig:
    """Breaker, retry and limiter on (defaults), limits far above what the bench uses."""
    return ConnectionConfig(
        name="bench",
        provider="openai",
        base_url=base_url,
        api_key=Secret(API_KEY),
        rate_limit=RateLimitConfig(
            requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=64
        ),
    )


async def actor_request(conn: Connection, shape: int) -> int:
    request = ChatRequest(
        model=f"chunks-{shape}",
        messages=[Message(role="user", content=PROMPT)],
        max_tokens=MAX_TOKENS,
    )
    if not shape:
        result = await conn.chat(request)
        if not isinstance(result, Completion):
            raise BenchError(f"actor: {result}")
        return 1
    events = 0
    async with conn.stream(request) as stream:
        async for _ in stream:
            events += 1
    result = stream.result
    if not isinstance(result, Completion):
        raise BenchError(f"actor: {result}")
    return events


def actor_worker(conn: Connection, shape: int) -> Worker:
    async def work(i: int, count: int) -> None:
        for _ in range(count):
            await actor_request(conn, shape)

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
    """Everything measured, created once and kept warm: one shared raw client, 32 raw
    clients (one per task), and an actor connection."""

    def __init__(self, base_url: str, conns: dict[str, Connection]) -> None:
        self.url = f"{base_url}/chat/completions"
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        self.shared = httpx.AsyncClient(limits=limits)
        self.per_task = [httpx.AsyncClient() for _ in range(max(CONCURRENCY))]
        self.conns = conns

    def variants(self, shape: int, concurrency: int) -> dict[str, Worker]:
        out: dict[str, Worker] = {}
        if concurrency == 1:
            out["raw"] = raw_worker([self.shared], self.url, shape)
        else:
            out["raw_shared"] = raw_worker([self.shared], self.url, shape)
            out["raw_per_task"] = raw_worker(self.per_task, self.url, shape)
        for name, conn in self.conns.items():
            out[name] = actor_worker(conn, shape)
        return out

    async def aclose(self) -> None:
        for client in [self.shared, *self.per_task]:
            await client.aclose()


Results = dict[tuple[int, int], dict[str, float]]  # (shape, concurrency) -> variant -> µs


async def run_all(
    base_url: str,
    *,
    scale: float,
    rounds: int,
    log: Callable[[str], None],
    candidate: ModuleType | None = None,
) -> Results:
    """Measure every configuration. With *candidate* (a copy of ``actors._provider``, see
    ``--candidate``) its actor is measured too, as ``actor_b``, in the same rounds."""
    conns = {"actor": Connection(actor_config(base_url))}
    actors: list[Any] = [ProviderActor(conns["actor"])]
    if candidate is not None:
        conns["actor_b"] = candidate.Connection(actor_config(base_url))
        actors.append(candidate.ProviderActor(conns["actor_b"]))
    results: Results = {}
    async with trio.open_nursery() as nursery:
        for actor in actors:
            await nursery.start(actor.run)
        clients = Clients(base_url, conns)
        try:
            for concurrency in CONCURRENCY:
                for shape in SHAPES:
                    count = max(concurrency, int(COUNTS[shape, concurrency] * scale))
                    variants = clients.variants(shape, concurrency)
                    for worker in variants.values():  # warm up: open connections, caches
                        await cpu_per_request(worker, concurrency, concurrency * 2)
                    best = dict.fromkeys(variants, math.inf)
                    for _ in range(rounds):
                        for name, worker in variants.items():
                            us = await cpu_per_request(worker, concurrency, count)
                            best[name] = min(best[name], us)
                    results[shape, concurrency] = best
                    log(f"  {_label(shape)} c={concurrency}: " + _fmt(best))
        finally:
            await clients.aclose()
            for conn in conns.values():
                conn.mailbox.close()
    return results


def _label(shape: int) -> str:
    return "chat" if not shape else f"stream{shape}"


def _fmt(row: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.0f}µs" for k, v in row.items())


# --------------------------------------------------------------------------- report


def summarize(results: Results) -> dict[str, Any]:
    """Baselines, ratios per configuration, per-chunk marginal costs and the worst cases
    (of ``actor``; a candidate ``actor_b`` gets its own ``ratio_b`` figures)."""
    figures: dict[str, Any] = {}
    worst: dict[str, list[float]] = {}
    for concurrency in CONCURRENCY:
        base: dict[int, float] = {}
        cost: dict[str, dict[int, float]] = {}
        for shape in SHAPES:
            row = results[shape, concurrency]
            raw_names = [k for k in row if k.startswith("raw")]
            chosen = min(raw_names, key=lambda k: row[k])
            base[shape] = row[chosen]
            entry: dict[str, Any] = {f"{k}_us": round(v, 1) for k, v in row.items()}
            entry["baseline"] = chosen
            for name in (k for k in row if not k.startswith("raw")):
                cost.setdefault(name, {})[shape] = row[name]
                ratio = row[name] / base[shape]
                worst.setdefault(f"request_{name}", []).append(ratio)
                entry[_ratio_key(name)] = round(ratio, 3)
            figures[f"{_label(shape)}_c{concurrency}"] = entry
        raw_chunk = (base[100] - base[20]) / 80
        chunk: dict[str, Any] = {"raw_us": round(raw_chunk, 2)}
        for name, by_shape in cost.items():
            per_chunk = (by_shape[100] - by_shape[20]) / 80
            chunk[f"{name}_us"] = round(per_chunk, 2)
            chunk[_ratio_key(name)] = round(per_chunk / raw_chunk, 3)
            worst.setdefault(f"chunk_{name}", []).append(per_chunk / raw_chunk)
        figures[f"chunk_c{concurrency}"] = chunk
    out: dict[str, Any] = {
        "request_ratio": round(max(worst["request_actor"]), 3),
        "chunk_ratio": round(max(worst["chunk_actor"]), 3),
    }
    if "request_actor_b" in worst:
        out["request_ratio_b"] = round(max(worst["request_actor_b"]), 3)
        out["chunk_ratio_b"] = round(max(worst["chunk_actor_b"]), 3)
    return {**out, **figures}


def _ratio_key(name: str) -> str:
    return "ratio" + name.removeprefix("actor")


def print_table(summary: dict[str, Any]) -> None:
    candidate = "request_ratio_b" in summary
    print()
    head = f"{'configuration':<16}{'raw shared':>12}{'raw/task':>10}{'actor':>9}{'ratio':>7}"
    print(head + (f"{'actor_b':>9}{'ratio':>7}" if candidate else "") + "  baseline")
    for concurrency in CONCURRENCY:
        for shape in SHAPES:
            row = summary[f"{_label(shape)}_c{concurrency}"]
            shared = row.get("raw_us", row.get("raw_shared_us"))
            per_task = row.get("raw_per_task_us")
            line = (
                f"{_label(shape) + f' c={concurrency}':<16}{shared:>10.0f}µs"
                + ("         -" if per_task is None else f"{per_task:>8.0f}µs")
                + f"{row['actor_us']:>7.0f}µs{row['ratio']:>7.3f}"
            )
            if candidate:
                line += f"{row['actor_b_us']:>7.0f}µs{row['ratio_b']:>7.3f}"
            print(line + f"  {row['baseline']}")
    print()
    for concurrency in CONCURRENCY:
        c = summary[f"chunk_c{concurrency}"]
        line = (
            f"per chunk c={concurrency}: raw {c['raw_us']:.2f} µs, "
            f"actor {c['actor_us']:.2f} µs (ratio {c['ratio']:.3f})"
        )
        if candidate:
            line += f", actor_b {c['actor_b_us']:.2f} µs (ratio {c['ratio_b']:.3f})"
        print(line)
    print(
        f"worst request ratio {summary['request_ratio']:.3f} (target ≤ 1.10), "
        f"worst chunk ratio {summary['chunk_ratio']:.3f} (target ≤ 1.0)"
    )
    if candidate:
        print(
            f"candidate: worst request ratio {summary['request_ratio_b']:.3f}, "
            f"worst chunk ratio {summary['chunk_ratio_b']:.3f}"
        )


# --------------------------------------------------------------------------- profiling


async def profile_actor(base_url: str, shape: int, concurrency: int, requests: int) -> None:
    """cProfile the actor path only (after a warm-up) and print the top functions."""
    conn = Connection(actor_config(base_url))
    async with trio.open_nursery() as nursery:
        await nursery.start(ProviderActor(conn).run)
        worker = actor_worker(conn, shape)
        await cpu_per_request(worker, concurrency, concurrency * 4)
        profiler = cProfile.Profile()
        profiler.enable()
        await cpu_per_request(worker, concurrency, requests)
        profiler.disable()
        conn.mailbox.close()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


# --------------------------------------------------------------------------- main


def load_candidate(path: Path) -> ModuleType:
    """Import *path* (a modified copy of ``actors/_provider.py``) as ``actors._candidate``,
    so its relative imports resolve against the real ``actors`` package."""
    spec = importlib.util.spec_from_file_location("actors._candidate", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU overhead of the provider actor vs httpx.")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--gap-us", type=float, default=100.0, help="server pause before each stream chunk"
    )
    parser.add_argument(
        "--profile",
        choices=["chat", "stream20", "stream100"],
        help="cProfile the actor path for one shape instead of benchmarking",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="for --profile")
    parser.add_argument(
        "--candidate",
        type=Path,
        help="a modified copy of actors/_provider.py, measured as actor_b in the same rounds",
    )
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    rounds = args.rounds or (2 if args.quick else ROUNDS)

    server = LoopbackServer(args.gap_us)
    try:
        if args.profile:
            shape = {"chat": 0, "stream20": 20, "stream100": 100}[args.profile]
            n = 200 if shape == 0 else 400 // max(1, shape // 10)
            trio.run(profile_actor, server.base_url, shape, args.concurrency, n * args.concurrency)
            return
        print(f"loopback server on {server.base_url}; {rounds} rounds, best kept", flush=True)
        started = time.perf_counter()
        candidate = load_candidate(args.candidate) if args.candidate else None
        results = trio.run(
            lambda: run_all(
                server.base_url,
                scale=scale,
                rounds=rounds,
                log=lambda s: print(s, flush=True),
                candidate=candidate,
            )
        )
    finally:
        server.close()
    summary = summarize(results)
    print_table(summary)
    print(f"({time.perf_counter() - started:.0f} s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
