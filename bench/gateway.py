"""What the WebSocket gateway adds to a streamed request: the server's CPU per chunk through
the gateway against the same requests streamed in process (``rt.stream``), the client's CPU
per chunk, and the throughput of each.

Why this benchmark: the gateway is a translation layer (frames over one socket per client,
one task per request, whole-frame writes with backpressure); its cost per chunk should be
small next to what a chunk already costs in the runtime (decode the provider's SSE, route,
relay). Measuring it against the in-process path in the same run, with the same fake
provider, cancels out the machine and the provider side.

Two processes, so that each side's CPU is its own:

- the **server** (this script with ``--serve``, started by the measuring process): a runtime
  with one OpenAI connection on the in-memory `FakeTransport` (``CHUNKS`` tokens per answer,
  no pauses, so the provider side costs only the runtime's own work) and a gateway on
  loopback port 0. It reports its own CPU time (``time.process_time``) when asked, on a line
  protocol over its stdin/stdout, and runs the in-process baseline itself when asked;
- the **client** (this process): the Python `Client`, ``SOCKETS`` WebSocket connections per
  encoding, opened before measuring.

What is measured, per round (rounds interleave the paths; the best of ``ROUNDS`` is kept):

- *in process*: ``STREAMS`` concurrent ``rt.stream`` calls in the server process, each
  reading every event: wall and CPU time;
- *gateway*: the same ``STREAMS`` concurrent streams through the gateway, spread over the
  ``SOCKETS`` connections (JSON and MessagePack): the client's wall time, the server's CPU
  (its process time across the run) and the client's CPU;
- *latency*: one stream at a time (``SEQUENTIAL`` streams, concurrency 1), in process and
  through the gateway (JSON, one socket): the added wall time per chunk.

Figures: **added server CPU per chunk** = server CPU per chunk through the gateway minus the
in-process CPU per chunk (what the gateway itself costs the server); **client CPU per chunk**;
**throughput ratio** = gateway chunks/s over in-process chunks/s. On a 2-core machine the
client and the server each have a core; the throughput is the slower side's.

Run: ``python bench/gateway.py`` (``--quick`` for fewer rounds;
``--profile server|client [--encoding json|msgpack]`` runs the gateway streams under cProfile
in the server or in the client process and prints the top functions). The last line printed
is a JSON object for scripts.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from actors._client import Client
from actors.testing import FakeTransport
from protocol._config import GatewayConfig, Secret
from protocol._config_load import loads_config
from protocol._frames import Encoding
from protocol._messages import ChatRequest, Completion, Message, TextDelta
from supervisors._runtime import Runtime, open_runtime
from supervisors._serving import start_gateway

CHUNKS = 100
STREAMS = 100
SOCKETS = 10
SEQUENTIAL = 20
ROUNDS = 5
TOKEN = "bench-token"
SCRIPT = str(Path(__file__).resolve())
CONFIG = """
[runtime]
shutdown_timeout_s = 1.0

[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "fake-model"

[connections.local.rate_limit]
concurrent_requests = 1000
"""


def request(i: int) -> ChatRequest:
    return ChatRequest(
        model="fake-model", messages=[Message(role="user", content=f"benchmark prompt {i}")]
    )


# --------------------------------------------------------------------------- the server process


async def in_process(rt: Runtime, indices: range) -> int:
    """Stream every request of *indices* concurrently in process; the text chunks seen."""
    seen = 0

    async def one(i: int) -> None:
        nonlocal seen
        async with rt.stream(request(i)) as stream:
            async for event in stream:
                seen += isinstance(event, TextDelta)
        assert isinstance(stream.result, Completion), stream.result

    async with trio.open_nursery() as nursery:
        for i in indices:
            nursery.start_soon(one, i)
    return seen


async def sequential(run: Callable[[range], Awaitable[int]]) -> int:
    seen = 0
    for i in range(SEQUENTIAL):
        seen += await run(range(i, i + 1))
    return seen


async def timed(run: Callable[[], Awaitable[int]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = await run()
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "chunks": chunks,
    }


async def lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        while b"\n" not in buffer:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
        line, buffer = buffer.split(b"\n", 1)
        yield line.decode()


def reply(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    """The server process: runtime + gateway; commands on stdin, one JSON reply per line:
    ``cpu`` (this process's CPU seconds), ``inprocess concurrent|sequential``, ``profile``
    (start cProfile), ``stats`` (stop it, print the top functions to stderr), ``quit``."""
    transport = FakeTransport(seed=1, answer_tokens=CHUNKS)
    profiler: cProfile.Profile | None = None
    async with (
        open_runtime(loads_config(CONFIG), transport=transport) as rt,
        trio.open_nursery() as nursery,
    ):
        config = GatewayConfig(port=0, tokens=[Secret(TOKEN)], max_concurrent_per_client=1000)
        gateway = await start_gateway(rt, nursery, config)
        await in_process(rt, range(10))  # warm up
        reply({"port": gateway.port})
        async for line in lines(trio.lowlevel.FdStream(os.dup(0))):
            command = line.split()
            if command == ["cpu"]:
                reply({"cpu": time.process_time()})
            elif command == ["inprocess", "concurrent"]:
                reply(await timed(partial(in_process, rt, range(STREAMS))))
            elif command == ["inprocess", "sequential"]:
                reply(await timed(partial(sequential, partial(in_process, rt))))
            elif command == ["profile"]:
                profiler = cProfile.Profile()
                profiler.enable()
                reply({})
            elif command == ["stats"] and profiler is not None:
                profiler.disable()
                stats = pstats.Stats(profiler, stream=sys.stderr).strip_dirs()
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(40)
                reply({})
            else:
                break
        await gateway.shutdown(1)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the client process


class Server:
    """The server process, driven over its stdin/stdout."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._lines = lines(process.stdout)

    async def ask(self, command: str) -> dict[str, Any]:
        await self._stdin.send_all(command.encode() + b"\n")
        return await self.read()

    async def read(self) -> dict[str, Any]:
        line = await self._lines.__anext__()
        value: dict[str, Any] = json.loads(line)
        return value


async def through_gateway(clients: list[Client], indices: range) -> int:
    """The requests of *indices* through the gateway, spread over *clients*."""
    seen = 0

    async def one(client: Client, i: int) -> None:
        nonlocal seen
        async with client.stream(request(i)) as stream:
            async for event in stream:
                seen += isinstance(event, TextDelta)
        assert isinstance(stream.result, Completion), stream.result

    async with trio.open_nursery() as nursery:
        for k, client in enumerate(clients):
            for i in indices[k :: len(clients)]:
                nursery.start_soon(one, client, i)
    return seen


async def measure_gateway(server: Server, run: Callable[[], Awaitable[int]]) -> dict[str, float]:
    before = (await server.ask("cpu"))["cpu"]
    figures = await timed(run)
    figures["server_cpu"] = (await server.ask("cpu"))["cpu"] - before
    return figures


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(run[key] for run in runs) for key in runs[0]}


async def bench(rounds: int, profile: str | None, profile_encoding: Encoding) -> dict[str, Any]:
    command = [sys.executable, SCRIPT, "--serve"]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    server = Server(process)
    try:
        url = f"ws://127.0.0.1:{(await server.read())['port']}"
        async with AsyncExitStack() as stack:
            clients: dict[Encoding, list[Client]] = {}
            for encoding in ("json", "msgpack"):
                clients[encoding] = [
                    await stack.enter_async_context(
                        Client.connect(url, token=TOKEN, encoding=encoding)
                    )
                    for _ in range(SOCKETS)
                ]
                await through_gateway(clients[encoding], range(20))  # warm up
            if profile is not None:
                await run_profile(server, clients[profile_encoding], profile)
                return {}
            return await run_rounds(server, clients, rounds)
    finally:
        with trio.move_on_after(5):
            assert process.stdin is not None
            await process.stdin.aclose()
            await process.wait()
        if process.returncode is None:
            process.kill()


async def run_profile(server: Server, clients: list[Client], where: str) -> None:
    run = partial(through_gateway, clients, range(STREAMS))
    if where == "server":
        await server.ask("profile")
        await run()
        await server.ask("stats")
        await trio.sleep(0.5)  # let the server's stderr through first
        return
    profiler = cProfile.Profile()
    profiler.enable()
    await run()
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)


async def run_rounds(
    server: Server, clients: dict[Encoding, list[Client]], rounds: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {}

    def keep(name: str, figures: dict[str, float]) -> None:
        runs.setdefault(name, []).append(figures)

    for _ in range(rounds):
        keep("in_process", await server.ask("inprocess concurrent"))
        for encoding in ("json", "msgpack"):
            run = partial(through_gateway, clients[encoding], range(STREAMS))
            keep(f"gateway_{encoding}", await measure_gateway(server, run))
        keep("in_process_seq", await server.ask("inprocess sequential"))
        one_socket = partial(through_gateway, clients["json"][:1])
        keep("gateway_seq", await measure_gateway(server, partial(sequential, one_socket)))
    results = {name: best(figures) for name, figures in runs.items()}
    return report(results, rounds)


def report(results: dict[str, dict[str, float]], rounds: int) -> dict[str, Any]:
    base = results["in_process"]
    chunks = STREAMS * CHUNKS
    base_cpu = base["cpu"] / chunks * 1e6
    out: dict[str, Any] = {"streams": STREAMS, "sockets": SOCKETS, "chunks_per_stream": CHUNKS}
    print(
        f"{STREAMS} concurrent streams of {CHUNKS} chunks ({SOCKETS} sockets through the "
        f"gateway, server in its own process); best of {rounds} rounds"
    )
    print(
        f"{'path':<18}{'chunks/s':>10}{'server CPU':>12}{'added':>9}{'client CPU':>12}"
        f"{'throughput':>12}"
    )
    print(f"{'':<18}{'':>10}{'µs/chunk':>12}{'µs/chunk':>9}{'µs/chunk':>12}{'vs in proc':>12}")
    print(f"{'in_process':<18}{chunks / base['wall']:>10,.0f}{base_cpu:>12.1f}")
    out["in_process_chunks_per_s"] = round(chunks / base["wall"])
    out["in_process_cpu_us_per_chunk"] = round(base_cpu, 2)
    for encoding in ("json", "msgpack"):
        name = f"gateway_{encoding}"
        figures = results[name]
        assert figures["chunks"] == base["chunks"] == chunks, (name, figures["chunks"])
        server_cpu = figures["server_cpu"] / chunks * 1e6
        client_cpu = figures["cpu"] / chunks * 1e6
        added = server_cpu - base_cpu
        ratio = base["wall"] / figures["wall"]
        print(
            f"{name:<18}{chunks / figures['wall']:>10,.0f}{server_cpu:>12.1f}{added:>9.1f}"
            f"{client_cpu:>12.1f}{ratio:>11.2f}x"
        )
        out[f"{name}_chunks_per_s"] = round(chunks / figures["wall"])
        out[f"{name}_server_cpu_us_per_chunk"] = round(server_cpu, 2)
        out[f"{name}_added_cpu_us_per_chunk"] = round(added, 2)
        out[f"{name}_client_cpu_us_per_chunk"] = round(client_cpu, 2)
        out[f"{name}_throughput_vs_in_process"] = round(ratio, 3)
    seq_base, seq_gw = results["in_process_seq"], results["gateway_seq"]
    seq_chunks = SEQUENTIAL * CHUNKS
    latency = (seq_gw["wall"] - seq_base["wall"]) / seq_chunks * 1e6
    print(
        f"one stream at a time ({SEQUENTIAL} streams, JSON): in process "
        f"{seq_base['wall'] / seq_chunks * 1e6:.1f} µs/chunk, gateway "
        f"{seq_gw['wall'] / seq_chunks * 1e6:.1f} µs/chunk: added latency {latency:.1f} µs per "
        f"chunk; server CPU {seq_gw['server_cpu'] / seq_chunks * 1e6:.1f} µs/chunk "
        f"(in process {seq_base['cpu'] / seq_chunks * 1e6:.1f}), client CPU "
        f"{seq_gw['cpu'] / seq_chunks * 1e6:.1f} µs/chunk"
    )
    out["added_latency_us_per_chunk"] = round(latency, 2)
    out["seq_added_cpu_us_per_chunk"] = round(
        (seq_gw["server_cpu"] - seq_base["cpu"]) / seq_chunks * 1e6, 2
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--profile", choices=("server", "client"))
    parser.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
        return
    rounds = 2 if args.quick else ROUNDS
    figures = trio.run(bench, rounds, args.profile, args.encoding)
    if figures:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
