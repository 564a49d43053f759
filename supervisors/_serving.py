"""Serving a runtime over the WebSocket gateway.

`RuntimeBackend` adapts a `Runtime` to the `GatewayBackend` protocol the gateway needs, and to
the HTTP face's `HttpBackend` (both live in `actors` and may not import `supervisors`);
`start_gateway` starts a `Gateway` for a runtime in a nursery, with the HTTP face on its port
when ``[gateway] http`` is on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import trio

from actors._gateway import Gateway, StreamHandle
from actors._status_page import StatusSnapshot, build_snapshot
from protocol._config import GatewayConfig
from protocol._frames import ConnectionStatus
from protocol._messages import ChatRequest, Completion, Embeddings, EmbedRequest, Failure
from protocol._openai_face import model_candidates

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

    # The HTTP face's extra needs (`actors._http_face.HttpBackend`).

    def model_list(self) -> list[tuple[str, str]]:
        runtime = self.runtime
        configs = {name: conn.config for name, conn in runtime.connections.items()}
        candidates = model_candidates(runtime.router.routes, configs)
        return [(name, owner) for name, owner in candidates if runtime.connections_for(name)]

    def routable(self, model: str) -> bool:
        return bool(self.runtime.connections_for(model))

    def health_report(self) -> tuple[str, bytes]:
        health = self.runtime.health()
        return health.status, msgspec.json.encode(health)

    def metrics_text(self) -> str:
        return self.runtime.metrics().prometheus()

    def status_snapshot(self) -> StatusSnapshot:
        """The status page's data (``actors._status_page``)."""
        health = self.runtime.health()
        return build_snapshot(health.status, health.connections, self.runtime.metrics())

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
    backend = RuntimeBackend(runtime)
    gateway = Gateway(backend, cfg)
    if cfg.http:
        from actors._http_face import HttpFace  # the HTTP stack only when it is used

        gateway.http = HttpFace(backend, cfg, clients=gateway.clients, status=backend)
    started: Gateway = await nursery.start(gateway.serve)
    return started
