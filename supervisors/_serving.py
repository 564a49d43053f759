"""Serving a runtime over the WebSocket gateway.

`RuntimeBackend` adapts a `Runtime` to the `GatewayBackend` protocol the gateway needs (the
gateway lives in `actors` and may not import `supervisors`); `start_gateway` starts a
`Gateway` for a runtime in a nursery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from actors._gateway import Gateway, StreamHandle
from protocol._config import GatewayConfig
from protocol._frames import ConnectionStatus
from protocol._messages import ChatRequest, Completion, Embeddings, EmbedRequest, Failure

from ._runtime import Runtime


class RuntimeBackend:
    """A `Runtime` seen through the gateway's `GatewayBackend` protocol."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # Through the runtime (not its router directly), so gateway traffic is counted in the
    # runtime's metrics like any other.

    @asynccontextmanager
    async def stream_request(self, request: ChatRequest) -> AsyncIterator[StreamHandle]:
        async with self.runtime.stream(request) as handle:
            yield handle

    async def chat_request(self, request: ChatRequest) -> Completion | Failure:
        return await self.runtime.chat_result(request)

    async def embed_request(self, request: EmbedRequest) -> Embeddings | Failure:
        return await self.runtime.embed_result(request)

    def status_report(self) -> tuple[str, list[ConnectionStatus]]:
        health = self.runtime.health()
        metrics = self.runtime.metrics().connections
        rows = []
        for conn in health.connections:
            m = metrics.get(conn.name)
            rows.append(
                ConnectionStatus(
                    name=conn.name,
                    provider=conn.provider,
                    running=conn.running,
                    breaker=conn.breaker,
                    queued=conn.queued,
                    in_flight=conn.in_flight,
                    requests=m.requests if m else 0,
                    completions=m.completions if m else 0,
                    failures=sum(m.failures.values()) if m else 0,
                    input_tokens=m.input_tokens if m else 0,
                    output_tokens=m.output_tokens if m else 0,
                    cost=m.cost if m else None,
                    incarnation=conn.incarnation,
                )
            )
        return health.status, rows


async def start_gateway(
    runtime: Runtime, nursery: trio.Nursery, config: GatewayConfig | None = None
) -> Gateway:
    """Start a gateway for *runtime* in *nursery* (``config`` defaults to the runtime's
    ``[gateway]`` section, or loopback defaults) and return it once it listens."""
    cfg = config or runtime.config.gateway or GatewayConfig()
    gateway = Gateway(RuntimeBackend(runtime), cfg)
    started: Gateway = await nursery.start(gateway.serve)
    return started
