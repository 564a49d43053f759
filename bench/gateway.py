"""What the WebSocket gateway adds to a streamed request: chunks per second through the
gateway against the same requests streamed in process (``rt.stream``), and the added time
per chunk.

Why this benchmark: the gateway is a translation layer (frames over one socket per client,
one task per request, one whole-frame write at a time with backpressure); its cost per chunk
should be small next to what a chunk already costs in the runtime (decode the provider's SSE,
route, relay). Measuring it against the in-process path in the same run, with the same fake
provider, cancels out the machine and the provider side.

What is measured, per round (the best of ``ROUNDS`` is kept):

- *in process*: ``STREAMS`` concurrent ``rt.stream`` calls, each reading every event;
- *gateway*: the same ``STREAMS`` concurrent streams through a gateway on loopback, spread
  over ``SOCKETS`` WebSocket connections of the Python `Client` (JSON and MessagePack);
- *latency*: one stream at a time (concurrency 1), in process and through the gateway: the
  added wall time per chunk is the gateway's latency per chunk.

The provider is the in-memory `FakeTransport` (``CHUNKS`` tokens per answer, no pauses), so
the provider side costs only the runtime's own work. Client and gateway run in this same
process and trio run, so "through the gateway" includes the client's own decoding: the
figures are an upper bound of the server's cost.

Run: ``python bench/gateway.py``. The last line printed is a JSON object for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
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
ROUNDS = 3
TOKEN = "bench-token"
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


async def through_gateway(url: str, indices: range, sockets: int, encoding: Encoding) -> int:
    """The same requests through the gateway, spread over *sockets* connections."""
    seen = 0

    async def one(client: Client, i: int) -> None:
        nonlocal seen
        async with client.stream(request(i)) as stream:
            async for event in stream:
                seen += isinstance(event, TextDelta)
        assert isinstance(stream.result, Completion), stream.result

    async def connection(k: int) -> None:
        async with (
            Client.connect(url, token=TOKEN, encoding=encoding) as client,
            trio.open_nursery() as nursery,
        ):
            for i in indices[k::sockets]:
                nursery.start_soon(one, client, i)

    async with trio.open_nursery() as nursery:
        for k in range(sockets):
            nursery.start_soon(connection, k)
    return seen


async def sequential(run: Callable[[range], Awaitable[int]]) -> int:
    seen = 0
    for i in range(SEQUENTIAL):
        seen += await run(range(i, i + 1))
    return seen


async def measure(run: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """Best (wall seconds, CPU seconds) of ``ROUNDS`` runs, and the chunks of one run."""
    best_wall = best_cpu = float("inf")
    chunks = 0
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.process_time()
        chunks = await run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, chunks


async def bench() -> dict[str, Any]:
    transport = FakeTransport(seed=1, answer_tokens=CHUNKS)
    async with (
        open_runtime(loads_config(CONFIG), transport=transport) as rt,
        trio.open_nursery() as nursery,
    ):
        config = GatewayConfig(port=0, tokens=[Secret(TOKEN)], max_concurrent_per_client=1000)
        gateway = await start_gateway(rt, nursery, config)
        url = gateway.url
        everything = range(STREAMS)
        await in_process(rt, range(10))  # warm up both paths
        await through_gateway(url, range(10), 2, "json")

        results: dict[str, tuple[float, float, int]] = {}
        results["in_process"] = await measure(partial(in_process, rt, everything))
        for encoding in ("json", "msgpack"):
            run = partial(through_gateway, url, everything, SOCKETS, encoding)
            results[f"gateway_{encoding}"] = await measure(run)
        results["in_process_seq"] = await measure(partial(sequential, partial(in_process, rt)))
        one_socket = partial(through_gateway, url, sockets=1, encoding="json")
        results["gateway_seq"] = await measure(partial(sequential, one_socket))
        await gateway.shutdown(1)
        nursery.cancel_scope.cancel()

    base_wall, base_cpu, base_chunks = results["in_process"]
    out: dict[str, Any] = {"streams": STREAMS, "sockets": SOCKETS, "chunks_per_stream": CHUNKS}
    print(
        f"{STREAMS} concurrent streams of {CHUNKS} chunks "
        f"({SOCKETS} sockets through the gateway); best of {ROUNDS} rounds"
    )
    print(f"{'path':<18}{'chunks/s':>12}{'wall µs/chunk':>16}{'CPU µs/chunk':>15}")
    for name in ("in_process", "gateway_json", "gateway_msgpack"):
        wall, cpu, chunks = results[name]
        assert chunks == base_chunks == STREAMS * CHUNKS, (name, chunks)
        rate = chunks / wall
        print(f"{name:<18}{rate:>12,.0f}{wall / chunks * 1e6:>16.2f}{cpu / chunks * 1e6:>15.2f}")
        out[f"{name}_chunks_per_s"] = round(rate)
        out[f"{name}_cpu_us_per_chunk"] = round(cpu / chunks * 1e6, 2)
    for encoding in ("json", "msgpack"):
        wall, cpu, chunks = results[f"gateway_{encoding}"]
        added = (cpu - base_cpu) / chunks * 1e6
        print(
            f"gateway ({encoding}) adds {added:.2f} µs CPU per chunk; throughput "
            f"{base_wall / wall:.2f}x of in process"
        )
        out[f"gateway_{encoding}_added_cpu_us_per_chunk"] = round(added, 2)
        out[f"gateway_{encoding}_throughput_vs_in_process"] = round(base_wall / wall, 3)
    seq_base, _, seq_chunks = results["in_process_seq"]
    seq_gw, _, _ = results["gateway_seq"]
    latency = (seq_gw - seq_base) / seq_chunks * 1e6
    print(
        f"one stream at a time ({SEQUENTIAL} streams): in process "
        f"{seq_base / seq_chunks * 1e6:.2f} µs/chunk, gateway {seq_gw / seq_chunks * 1e6:.2f} "
        f"µs/chunk: added latency {latency:.2f} µs per chunk"
    )
    out["added_latency_us_per_chunk"] = round(latency, 2)
    return out


def main() -> None:
    figures = trio.run(bench)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
