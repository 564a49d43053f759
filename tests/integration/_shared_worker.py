"""One "gateway process" for the shared-state tests: a runtime with one connection to a fake
provider and ``[runtime] state`` from the command line.

    python _shared_worker.py STATE BASE_URL MODE [SECONDS]

It opens the runtime, prints ``READY`` and waits for a line on stdin, then runs MODE and
prints one JSON line with what it saw:

- ``hammer``: 8 tasks send requests back to back for SECONDS (RPM 60 on the connection;
  one request before ``READY`` warms the process up);
- ``trip``: two requests for model ``boom`` (the fake answers 503), which open the breaker;
- ``watch``: poll ``rt.health()`` until the breaker shows open (at most SECONDS), then send
  one request (it must fail ``circuit_open`` without reaching the provider).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol._config import (
    BreakerConfig,
    ConnectionConfig,
    RateLimitConfig,
    RetryConfig,
    RuntimeConfig,
    RuntimeSettings,
)
from protocol._messages import ChatRequest, Completion, Failure, Message
from supervisors import open_runtime

RPM = 60


def config(state: str, base_url: str) -> RuntimeConfig:
    conn = ConnectionConfig(
        name="shared",
        provider="openai",
        base_url=base_url,
        default_model="m",
        serves=["*"],
        timeout=120.0,
        rate_limit=RateLimitConfig(requests_per_minute=RPM),
        retry=RetryConfig(max_attempts=1),
        breaker=BreakerConfig(window_size=4, minimum_calls=2, failure_rate=50.0, open_s=30.0),
    )
    return RuntimeConfig(
        connections={"shared": conn},
        runtime=RuntimeSettings(state=state, shutdown_timeout_s=1.0),
    )


def request(model: str = "m") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content="hi")])


async def main(state: str, base_url: str, mode: str, seconds: float) -> None:
    async with open_runtime(config(state, base_url)) as rt:
        if mode == "hammer":
            await rt.chat(request())  # warm: a first request builds clients and connections
        print("READY", rt.state, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        result: dict[str, object] = {"mode": mode}
        if mode == "hammer":
            outcomes: dict[str, int] = {}
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):

                        async def loop() -> None:
                            while True:
                                got = await rt.chat_result(request())
                                kind = "ok" if isinstance(got, Completion) else got.kind.value
                                outcomes[kind] = outcomes.get(kind, 0) + 1

                        nursery.start_soon(loop)
            result["outcomes"] = outcomes
        elif mode == "trip":
            kinds = []
            for _ in range(2):
                got = await rt.chat_result(request("boom"))
                kinds.append("ok" if isinstance(got, Completion) else got.kind.value)
            result["kinds"] = kinds
            result["breaker"] = rt.health().connections[0].breaker
            await trio.sleep(2.0)  # stay a moment: the decision is synced in the background
        else:
            start = time.monotonic()
            seen = None
            with trio.move_on_after(seconds):
                # Polled: what is watched happens in another process.
                while rt.health().connections[0].breaker != "open":  # noqa: ASYNC110
                    await trio.sleep(0.05)
                seen = time.monotonic() - start
            got = await rt.chat_result(request())
            result["seen_open_after"] = seen
            result["request"] = "ok" if isinstance(got, Completion) else got.kind.value
            assert isinstance(got, Completion | Failure)
        result["state"] = rt.state
        result["outages"] = 0 if rt.shared is None else rt.shared.outages
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], seconds)
