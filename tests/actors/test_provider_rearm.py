"""The stall deadline is moved before a read only when it moves by more than
`REARM_SLACK_S`: chunks that come close together cost no deadline change each, and a stall
after them is still declared within that slack of the exact time (see "Time limits" in
``actors/_provider.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from actors._provider import REARM_SLACK_S, Connection
from protocol._config import TimeoutConfig
from protocol._errors import ErrorKind
from protocol._messages import Completion, Failure, TextDelta

from .test_provider import chat_request, config, serving

GAP = 0.0001  # 0.1 ms between chunks: ten chunks per slack


def _event(text: str) -> bytes:
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"' + text.encode() + b'"},"finish_reason":null}]}\n\n'
    )


_END = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


class Paced(httpx.AsyncBaseTransport):
    """An OpenAI stream of *chunks* text chunks, *GAP* apart, then silence (*hang*) or the
    end of the stream."""

    def __init__(self, chunks: int, *, hang: bool) -> None:
        self.chunks = chunks
        self.hang = hang
        self.last_chunk_at = 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                for i in range(transport.chunks):
                    await trio.sleep(GAP)
                    transport.last_chunk_at = trio.current_time()
                    yield _event(f"t{i} ")
                if transport.hang:
                    await trio.sleep_forever()
                yield _END

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())


class DeadlineSets:
    """Counts deadline changes of cancel scopes made by `actors._provider`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import sys

        self.count = 0
        prop = trio.CancelScope.deadline
        assert isinstance(prop, property)
        assert prop.fset is not None
        setter = prop.fset

        def counting(scope: trio.CancelScope, value: float) -> None:
            if sys._getframe(1).f_globals.get("__name__") == "actors._provider":
                self.count += 1
            setter(scope, value)

        monkeypatch.setattr(trio.CancelScope, "deadline", property(prop.fget, counting))


async def test_close_chunks_move_the_stall_deadline_once_per_slack(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = Paced(100, hang=False)
    conn = Connection(config("openai", timeouts=TimeoutConfig(stall=5.0)), transport=transport)
    async with serving(conn):
        sets = DeadlineSets(monkeypatch)
        async with conn.stream(chat_request()) as s:
            texts = [e.text async for e in s if isinstance(e, TextDelta)]
    assert isinstance(s.result, Completion)
    assert len(texts) == 100
    # 100 chunks over 10 ms: about one move per slack (1 ms), not one per chunk.
    assert 5 <= sets.count <= 100 * GAP / REARM_SLACK_S + 5


async def test_a_stall_after_close_chunks_fires_within_the_slack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = Paced(25, hang=True)
    conn = Connection(config("openai", timeouts=TimeoutConfig(stall=5.0)), transport=transport)
    async with serving(conn):
        async with conn.stream(chat_request()) as s:
            texts = [e.text async for e in s if isinstance(e, TextDelta)]
        ended = trio.current_time()
    result = s.result
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.TIMEOUT
    assert "timeouts.stall" in result.message
    assert len(texts) == 25
    silence = ended - transport.last_chunk_at
    assert 5.0 - REARM_SLACK_S <= silence <= 5.0
