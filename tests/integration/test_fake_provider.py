"""`FakeProvider` over real loopback sockets.

Every test listens on 127.0.0.1 port 0 and runs under a `trio.fail_after` limit (a hung test
fails instead of wedging the suite). Sleeps are real but short (tenths of a second); times are
only asserted as loose lower bounds, never as upper bounds, so a slow machine cannot make a
test flaky.

The first half drives the shell with a stub `ScriptSource` whose scripts are given by each test:
it checks that every step (head, chunk, pause, reset, hang) reaches a plain httpx client as
described, and that each attempt is reported exactly once. The second half runs the real
`ProviderCore` behind it: each dialect's healthy answers and its faults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple

import httpx
import pytest
import trio

from actors.testing._script import Chunk, Hang, Head, Pause, Reset, Script, Step
from actors.testing._server import FakeProvider

LIMIT = 10.0  # seconds; generous, only there so that a broken server fails instead of hanging


class Seen(NamedTuple):
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    now: float


class Finished(NamedTuple):
    attempt: int
    outcome: str
    now: float
    bytes_sent: int


class StubSource:
    """A `ScriptSource` that serves the given scripts in order (the last one repeats)."""

    def __init__(self, *scripts: list[Step]) -> None:
        self.scripts = list(scripts)
        self.seen: list[Seen] = []
        self.finished: list[Finished] = []
        self.finish_event = trio.Event()

    @property
    def attempts(self) -> list[Finished]:
        return self.finished

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
        index = len(self.seen)
        self.seen.append(Seen(method, path, query, dict(headers), body, now))
        steps = self.scripts[min(index, len(self.scripts) - 1)]
        return Script(list(steps), index, "stub")

    def finish(self, attempt: int, *, outcome: str, now: float, bytes_sent: int) -> None:
        self.finished.append(Finished(attempt, outcome, now, bytes_sent))
        self.finish_event.set()
        self.finish_event = trio.Event()

    async def wait_finished(self, count: int) -> None:
        while len(self.finished) < count:
            await self.finish_event.wait()


@asynccontextmanager
async def serving(fake: FakeProvider) -> AsyncIterator[FakeProvider]:
    """Run *fake* for the duration of the block, under the test time limit."""
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            yield fake
            nursery.cancel_scope.cancel()


def port_of(fake: FakeProvider) -> int:
    return int(fake.url.rsplit(":", 1)[1])


async def read_body(client: httpx.AsyncClient, url: str, into: bytearray) -> None:
    """Stream a GET of *url* into *into* (what arrived stays there when the body breaks)."""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for raw in response.aiter_raw():
            into += raw


def ok(body: bytes = b'{"ok": true}', status: int = 200) -> list[Step]:
    return [Head(status, [("content-type", "application/json")]), Chunk(body)]


# --------------------------------------------------------------------------- the shell


async def test_single_chunk_body_goes_with_content_length() -> None:
    source = StubSource(ok(b'{"hello": "world"}', status=201))
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        response = await client.post(fake.url + "/v1/things?x=1", content=b"payload")
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(b'{"hello": "world"}'))
        assert "transfer-encoding" not in response.headers
        assert response.content == b'{"hello": "world"}'
        await source.wait_finished(1)
    [seen] = source.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST",
        "/v1/things",
        "x=1",
        b"payload",
    )
    assert seen.headers["content-length"] == "7"
    assert seen.now >= 0
    assert source.finished == [Finished(0, "completed", source.finished[0].now, 18)]


async def test_several_chunks_are_streamed_with_chunked_encoding_and_pauses() -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    script: list[Step] = [Head(200, [("content-type", "text/event-stream")])]
    for piece in pieces:
        script += [Pause(0.05), Chunk(piece)]
    source = StubSource(script)
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        start = trio.current_time()
        received: list[tuple[float, bytes]] = []
        async with client.stream("POST", fake.url + "/v1/chat/completions") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            async for raw in response.aiter_raw():
                received.append((trio.current_time() - start, raw))
        await source.wait_finished(1)
    assert b"".join(raw for _, raw in received) == b"".join(pieces)
    # Each chunk is flushed at once, so the client sees it no earlier than its pause allows.
    assert received[-1][0] >= 0.15
    assert source.finished[0].outcome == "completed"
    assert source.finished[0].bytes_sent == sum(map(len, pieces))


async def test_script_without_body_or_head() -> None:
    source = StubSource([Head(204, [])], [])
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        first = await client.get(fake.url + "/a")
        second = await client.get(fake.url + "/b")
    assert (first.status_code, first.content) == (204, b"")
    assert (second.status_code, second.content) == (204, b"")


async def test_framing_headers_from_the_script_are_replaced() -> None:
    script: list[Step] = [
        Head(200, [("Content-Length", "999"), ("Transfer-Encoding", "gzip"), ("x-a", "1")]),
        Chunk(b"abc"),
    ]
    source = StubSource(script)
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        response = await client.get(fake.url)
    assert response.headers["content-length"] == "3"
    assert response.headers["x-a"] == "1"
    assert response.content == b"abc"


async def test_keep_alive_serves_sequential_requests_on_one_connection() -> None:
    source = StubSource(ok())
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.get(fake.url + "/v1/models")
            assert response.json() == {"ok": True}
        assert fake.open_connections == 1
        await source.wait_finished(5)
    assert [f.attempt for f in source.finished] == [0, 1, 2, 3, 4]
    assert {f.outcome for f in source.finished} == {"completed"}


async def test_connection_close_request_closes_after_the_response() -> None:
    source = StubSource(ok())
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        response = await client.get(fake.url, headers={"connection": "close"})
        assert response.headers["connection"] == "close"
        await fake.wait_no_connections()
        assert fake.open_connections == 0


async def test_reset_before_the_head_gives_the_client_no_response() -> None:
    source = StubSource([Pause(0.01), Reset()])
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.post(fake.url + "/v1/chat/completions", content=b"{}")
        assert not isinstance(info.value, httpx.TimeoutException)
        await source.wait_finished(1)
        await fake.wait_no_connections()
    assert source.finished[0].outcome == "reset"
    assert source.finished[0].bytes_sent == 0


async def test_reset_mid_stream_breaks_the_body() -> None:
    source = StubSource([Head(200, []), Chunk(b"data: 1\n\n"), Pause(0.02), Reset()])
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        received = bytearray()
        with pytest.raises(httpx.TransportError):
            await read_body(client, fake.url, received)
        await source.wait_finished(1)
    assert received == b"data: 1\n\n"
    assert source.finished[0] == Finished(0, "reset", source.finished[0].now, 9)


async def test_hang_before_the_head_until_the_client_times_out() -> None:
    source = StubSource([Hang()])
    async with serving(FakeProvider(core=source)) as fake:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.1)) as client:
            start = trio.current_time()
            with pytest.raises(httpx.ReadTimeout):
                await client.get(fake.url)
            assert trio.current_time() - start >= 0.1
        # The client has gone away: only now does the attempt end, as "hung".
        await source.wait_finished(1)
        await fake.wait_no_connections()
    assert source.finished[0].outcome == "hung"
    assert source.finished[0].now >= 0.1


async def test_hang_mid_stream_keeps_the_connection_open() -> None:
    source = StubSource([Head(200, []), Chunk(b"partial"), Hang()])
    async with serving(FakeProvider(core=source)) as fake:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.1)) as client:
            received = bytearray()
            with pytest.raises(httpx.ReadTimeout):
                await read_body(client, fake.url, received)
            assert received == b"partial"
            assert fake.open_connections == 1
        await source.wait_finished(1)
    assert source.finished[0] == Finished(0, "hung", source.finished[0].now, 7)


async def test_client_closing_mid_stream_is_reported_at_once() -> None:
    source = StubSource([Head(200, []), Chunk(b"first"), Pause(60), Chunk(b"never")])
    async with serving(FakeProvider(core=source)) as fake:
        # A raw socket client: breaking out of httpx's body iterator leaves its nested async
        # generators to the garbage collector (a ResourceWarning, an error under pytest).
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fake))
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while b"first" not in data:
                data += await stream.receive_some(65536)
        # Closing drops the connection: the server notices during its 60 s pause (the test's
        # time limit is far shorter).
        await source.wait_finished(1)
        await fake.wait_no_connections()
    assert source.finished[0] == Finished(0, "client_closed", source.finished[0].now, 5)


async def test_pipelined_requests_are_answered_in_order() -> None:
    source = StubSource(ok(b"one"), ok(b"two"))
    async with serving(FakeProvider(core=source)) as fake:
        port = port_of(fake)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n"
                b"GET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert data.index(b"one") < data.index(b"two")
    assert [s.path for s in source.seen] == ["/1", "/2"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_bad_http_gets_400_and_does_not_affect_others(garbage: bytes) -> None:
    source = StubSource(ok())
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        port = port_of(fake)
        bystander = await client.get(fake.url)  # an open keep-alive connection
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(garbage)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        assert (await client.get(fake.url)).status_code == 200
        assert bystander.status_code == 200
        assert fake.internal_errors == []


async def test_client_hanging_up_before_its_request_is_complete() -> None:
    source = StubSource(ok())
    async with serving(FakeProvider(core=source)) as fake:
        port = port_of(fake)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        await stream.aclose()
        await fake.wait_no_connections()
        async with httpx.AsyncClient() as client:
            assert (await client.get(fake.url)).status_code == 200
    assert len(source.seen) == 1  # only the complete request reached the core


async def test_an_exception_in_the_core_becomes_a_500_and_is_kept() -> None:
    class Broken(StubSource):
        def respond(self, **kwargs: object) -> Script:
            raise ZeroDivisionError("core bug")

    async with serving(FakeProvider(core=Broken())) as fake, httpx.AsyncClient() as client:
        response = await client.get(fake.url)
        assert response.status_code == 500
        assert "ZeroDivisionError" in response.text
        assert len(fake.internal_errors) == 1
        assert isinstance(fake.internal_errors[0], ZeroDivisionError)


async def test_an_unframeable_script_is_an_internal_error_not_a_crash() -> None:
    source = StubSource([Head(200, [("bad\nname", "x")]), Chunk(b"x")], ok())
    async with serving(FakeProvider(core=source)) as fake, httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(fake.url)
        assert len(fake.internal_errors) == 1
        assert (await client.get(fake.url)).status_code == 200


async def test_concurrent_connections_are_served_independently() -> None:
    script: list[Step] = [Head(200, []), Chunk(b"a"), Pause(0.1), Chunk(b"b")]
    source = StubSource(script)
    peak = 0
    async with serving(FakeProvider(core=source)) as fake:

        async def one() -> None:
            nonlocal peak
            async with httpx.AsyncClient() as client, client.stream("GET", fake.url) as response:
                peak = max(peak, fake.open_connections)
                assert await response.aread() == b"ab"

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
        await fake.wait_no_connections()
    assert peak > 1
    assert len(source.finished) == 8
    assert {f.outcome for f in source.finished} == {"completed"}


async def test_urls() -> None:
    fake = FakeProvider(core=StubSource(ok()))
    with pytest.raises(RuntimeError, match="not serving"):
        _ = fake.url
    async with serving(fake):
        assert fake.url.startswith("http://127.0.0.1:")
        assert fake.base_url("openai") == fake.url + "/v1"
        assert fake.base_url("anthropic") == fake.url + "/v1"
        assert fake.base_url("gemini") == fake.url + "/v1beta"
        assert fake.base_url("ollama") == fake.url
        with pytest.raises(ValueError, match="unknown dialect"):
            fake.base_url("cohere")
        with pytest.raises(RuntimeError, match="already serving"):
            await fake.serve()
    assert fake.attempts == []


def test_core_and_core_options_are_exclusive() -> None:
    with pytest.raises(TypeError, match="either core"):
        FakeProvider(core=StubSource(), seed=1, flavour="x")
    with pytest.raises(ValueError, match="port"):
        FakeProvider(core=StubSource(), port=70000)
