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

import functools
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple

import httpx
import pytest
import trio

from actors.testing._checker import InvariantViolation, check_client, check_stream_client
from actors.testing._faults import (
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Healthy,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    RateLimited,
    ResetBeforeHeaders,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)
from actors.testing._script import Chunk, Hang, Head, Pause, Reset, Script, Step
from actors.testing._server import FakeProvider, run_fake_provider
from protocol._config import ConnectionConfig, ProviderName, Secret
from protocol._dialect import HttpRequest, dialect_for
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Failure,
    Finished,
    Message,
    TextDelta,
)

LIMIT = 10.0  # seconds; generous, only there so that a broken server fails instead of hanging


class Seen(NamedTuple):
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    now: float


class Ended(NamedTuple):
    attempt: int
    outcome: str
    now: float
    bytes_sent: int


class StubSource:
    """A `ScriptSource` that serves the given scripts in order (the last one repeats)."""

    def __init__(self, *scripts: list[Step]) -> None:
        self.scripts = list(scripts)
        self.seen: list[Seen] = []
        self.finished: list[Ended] = []
        self.finish_event = trio.Event()

    @property
    def attempts(self) -> list[Ended]:
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
        self.finished.append(Ended(attempt, outcome, now, bytes_sent))
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
    assert source.finished == [Ended(0, "completed", source.finished[0].now, 18)]


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
    assert source.finished[0] == Ended(0, "reset", source.finished[0].now, 9)


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
    assert source.finished[0] == Ended(0, "hung", source.finished[0].now, 7)


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
    assert source.finished[0] == Ended(0, "client_closed", source.finished[0].now, 5)


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


# --------------------------------------------------------------------------- the real core

DIALECTS: list[ProviderName] = ["openai", "anthropic", "gemini", "ollama"]
PROMPT = [Message(role="user", content="tell me about trio nurseries")]


def connection(fake: FakeProvider, dialect: ProviderName) -> ConnectionConfig:
    return ConnectionConfig(
        name="fake", provider=dialect, base_url=fake.base_url(dialect), api_key=Secret("k")
    )


def http_request(fake: FakeProvider, dialect: ProviderName, *, stream: bool) -> HttpRequest:
    request = ChatRequest(model="fake-model", messages=PROMPT, stream=stream)
    return dialect_for(dialect).chat_request(
        request, connection(fake, dialect), model="fake-model", stream=stream
    )


async def send(
    client: httpx.AsyncClient, fake: FakeProvider, dialect: ProviderName, *, stream: bool
) -> httpx.Response:
    http = http_request(fake, dialect, stream=stream)
    return await client.request(http.method, http.url, headers=http.headers, content=http.body)


def decode(dialect: ProviderName, body: bytes) -> list[DecodedItem]:
    decoder = dialect_for(dialect).stream_decoder()
    return decoder.feed(body) + decoder.close()


async def timed_chunks(
    client: httpx.AsyncClient, fake: FakeProvider, dialect: ProviderName
) -> tuple[float, list[tuple[float, bytes]]]:
    """Stream a request: (seconds until the head, [(seconds, chunk)]) from the request start."""
    http = http_request(fake, dialect, stream=True)
    start = trio.current_time()
    chunks: list[tuple[float, bytes]] = []
    async with client.stream(http.method, http.url, headers=http.headers, content=http.body) as r:
        head = trio.current_time() - start
        async for raw in r.aiter_raw():
            chunks.append((trio.current_time() - start, raw))
    return head, chunks


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_healthy_answers_parse_in_every_dialect(dialect: ProviderName, stream: bool) -> None:
    async with serving(FakeProvider(seed=3)) as fake, httpx.AsyncClient() as client:
        response = await send(client, fake, dialect, stream=stream)
        await fake.wait_settled()
    assert response.status_code == 200
    if stream:
        assert "transfer-encoding" in response.headers
        items = decode(dialect, response.content)
        final = items[-1]
        assert isinstance(final, Finished), items
        text = "".join(i.text for i in items if isinstance(i, TextDelta))
        usage = final.usage
    else:
        assert response.headers["content-length"] == str(len(response.content))
        completion = dialect_for(dialect).parse_chat(response.content)
        assert isinstance(completion, Completion), completion
        text, usage = completion.text, completion.usage
    assert text.strip()
    [record] = fake.attempts
    assert (record.dialect, record.fault, record.status) == (dialect, "healthy", 200)
    assert (record.outcome, record.stream) == ("completed", stream)
    assert record.usage_reported == usage
    assert record.bytes_sent == len(response.content)


async def test_the_same_seed_gives_the_same_bytes() -> None:
    bodies = []
    for _ in range(2):
        async with serving(FakeProvider(seed=7)) as fake, httpx.AsyncClient() as client:
            bodies.append((await send(client, fake, "anthropic", stream=True)).content)
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_keep_alive_across_dialects_and_attempt_log(dialect: ProviderName) -> None:
    async with serving(FakeProvider()) as fake, httpx.AsyncClient() as client:
        for stream in (False, True, False):
            assert (await send(client, fake, dialect, stream=stream)).status_code == 200
        assert fake.open_connections == 1
        await fake.wait_settled()
    assert [(r.arrival, r.stream, r.outcome) for r in fake.attempts] == [
        (1, False, "completed"),
        (2, True, "completed"),
        (3, False, "completed"),
    ]


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        (RateLimited(retry_after=2.0), 429, ErrorKind.RATE_LIMITED),
        (ServerError(status=500), 500, ErrorKind.SERVER_ERROR),
        (ServerError(status=503), 503, ErrorKind.OVERLOADED),
        (Unauthorized(), 401, ErrorKind.AUTH),
        (ContextLengthExceeded(), 400, ErrorKind.CONTEXT_LENGTH),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_error_statuses(
    dialect: ProviderName, fault: Fault, status: int, kind: ErrorKind
) -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(fault))) as fake:
        async with httpx.AsyncClient() as client:
            response = await send(client, fake, dialect, stream=True)
        await fake.wait_settled()
    assert response.status_code == status
    failure = dialect_for(dialect).classify_error(status, response.headers, response.content)
    assert failure.kind is kind
    if isinstance(fault, RateLimited):
        assert response.headers["retry-after"] == "2"
        assert failure.retry_after == 2.0
    [record] = fake.attempts
    assert (record.fault, record.status, record.outcome) == (fault.name, status, "completed")


async def test_rate_limit_header_forms() -> None:
    plan = FaultPlan(
        sequence=(
            RateLimited(retry_after=1.5, header="ms"),
            RateLimited(retry_after=3.0, header="date"),
            RateLimited(retry_after=3.0, header="none"),
        )
    )
    async with serving(FakeProvider(plan=plan)) as fake, httpx.AsyncClient() as client:
        ms, date, none = [await send(client, fake, "openai", stream=False) for _ in range(3)]
    assert ms.headers["retry-after-ms"] == "1500"
    assert "retry-after" not in ms.headers
    assert date.headers["retry-after"].endswith(" GMT")
    assert "retry-after" not in none.headers
    assert "retry-after-ms" not in none.headers


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reset_before_headers(dialect: ProviderName) -> None:
    async with serving(FakeProvider(plan=FaultPlan.first(1, ResetBeforeHeaders()))) as fake:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError) as info:
                await send(client, fake, dialect, stream=True)
            assert not isinstance(info.value, httpx.TimeoutException)
            # The next request (arrival 2) is healthy, on a fresh connection.
            assert (await send(client, fake, dialect, stream=True)).status_code == 200
        await fake.wait_settled()
    first, second = fake.attempts
    assert (first.fault, first.status, first.outcome) == ("reset_before_headers", None, "reset")
    assert second.outcome == "completed"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_response_until_the_client_times_out(dialect: ProviderName) -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(NoResponse()))) as fake:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.1)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await send(client, fake, dialect, stream=False)
        await fake.wait_settled()
        await fake.wait_no_connections()
    [record] = fake.attempts
    assert (record.fault, record.status, record.outcome) == ("no_response", None, "hung")
    assert record.duration is not None
    assert record.duration >= 0.1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_slow_first_token_sends_the_head_at_once(dialect: ProviderName) -> None:
    plan = FaultPlan.always(SlowFirstToken(seconds=0.2))
    async with serving(FakeProvider(plan=plan)) as fake, httpx.AsyncClient() as client:
        head, chunks = await timed_chunks(client, fake, dialect)
    assert chunks[0][0] >= 0.2
    assert head < chunks[0][0]
    assert isinstance(decode(dialect, b"".join(c for _, c in chunks))[-1], Finished)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_then_continue(dialect: ProviderName) -> None:
    plan = FaultPlan.always(Stall(after_tokens=2, seconds=0.2))
    async with serving(FakeProvider(plan=plan)) as fake, httpx.AsyncClient() as client:
        _, chunks = await timed_chunks(client, fake, dialect)
        await fake.wait_settled()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(chunks)]
    assert max(gaps) >= 0.2
    items = decode(dialect, b"".join(c for _, c in chunks))
    assert isinstance(items[-1], Finished)
    # The stall sits right after the second token: text arrived before the first long gap
    # (found by index, not by clock arithmetic, so a loaded machine cannot blur it).
    stall = next(i for i, gap in enumerate(gaps) if gap >= 0.2)
    before = b"".join(c for _, c in chunks[: stall + 1])
    assert len([i for i in decode(dialect, before) if isinstance(i, TextDelta)]) >= 1
    assert fake.attempts[0].outcome == "completed"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_then_hang_keeps_the_stream_open(dialect: ProviderName) -> None:
    plan = FaultPlan.always(Stall(after_tokens=1, then="hang"))
    received = bytearray()
    async with serving(FakeProvider(plan=plan)) as fake:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.1)) as client:
            http = http_request(fake, dialect, stream=True)
            with pytest.raises(httpx.ReadTimeout):
                await stream_into(client, http, received)
        await fake.wait_settled()
    items = decode(dialect, bytes(received))
    assert any(isinstance(i, TextDelta) for i in items)
    assert isinstance(items[-1], Failure)  # cut: no terminator
    [record] = fake.attempts
    assert (record.outcome, record.tokens_emitted, record.bytes_sent) == (
        "hung",
        1,
        len(received),
    )


async def stream_into(client: httpx.AsyncClient, http: HttpRequest, into: bytearray) -> None:
    async with client.stream(http.method, http.url, headers=http.headers, content=http.body) as r:
        async for raw in r.aiter_raw():
            into += raw


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stream_cut_by_reset(dialect: ProviderName) -> None:
    plan = FaultPlan.always(StreamCut(after_tokens=2, how="reset"))
    received = bytearray()
    async with serving(FakeProvider(plan=plan)) as fake:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError):
                await stream_into(client, http_request(fake, dialect, stream=True), received)
        await fake.wait_settled()
    items = decode(dialect, bytes(received))
    assert isinstance(items[-1], Failure)
    assert items[-1].kind is ErrorKind.STREAM_INTERRUPTED
    [record] = fake.attempts
    assert (record.outcome, record.tokens_emitted) == ("reset", 2)
    assert record.bytes_sent == len(received)


@pytest.mark.parametrize(
    ("fault", "kinds"),
    [
        (StreamCut(after_tokens=2, how="eof"), {ErrorKind.STREAM_INTERRUPTED}),
        (MissingTerminator(), {ErrorKind.STREAM_INTERRUPTED}),
        (MalformedChunk(after_tokens=1), {ErrorKind.PROTOCOL, ErrorKind.STREAM_INTERRUPTED}),
        (MidStreamError(after_tokens=1), {ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR}),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_broken_streams_with_a_clean_http_end(
    dialect: ProviderName, fault: Fault, kinds: set[ErrorKind]
) -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(fault))) as fake:
        async with httpx.AsyncClient() as client:
            response = await send(client, fake, dialect, stream=True)
        await fake.wait_settled()
    assert response.status_code == 200  # HTTP itself ended cleanly
    items = decode(dialect, response.content)
    if isinstance(fault, MissingTerminator) and dialect in ("openai", "anthropic"):
        # Their finish reason came before the missing terminator: a complete answer.
        assert isinstance(items[-1], Finished), items[-3:]
    else:
        assert isinstance(items[-1], Failure), items[-3:]
        assert items[-1].kind in kinds
        assert not any(isinstance(i, Finished) for i in items)
    assert fake.attempts[0].outcome == "completed"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_non_streamed_body_cut_in_half(dialect: ProviderName) -> None:
    plan = FaultPlan.always(StreamCut(how="eof"))
    async with serving(FakeProvider(plan=plan)) as fake, httpx.AsyncClient() as client:
        response = await send(client, fake, dialect, stream=False)
    assert response.status_code == 200
    parsed = dialect_for(dialect).parse_chat(response.content)
    assert isinstance(parsed, Failure)


async def test_client_closing_mid_stream_is_logged_with_what_it_received() -> None:
    fake = FakeProvider(token_interval=0.05, answer_tokens=40)
    async with serving(fake):
        http = http_request(fake, "openai", stream=True)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fake))
        async with stream:
            path = http.url[len(fake.url) :]
            head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            await stream.send_all(f"{head}content-length: {len(http.body)}\r\n\r\n".encode())
            await stream.send_all(http.body)
            data = b""
            while data.count(b"data: ") < 3:
                data += await stream.receive_some(65536)
        await fake.wait_settled()
    [record] = fake.attempts
    assert record.outcome == "client_closed"
    assert record.status == 200
    assert 1 <= record.tokens_emitted < 40
    assert record.usage_reported is None  # the usage chunk never went out
    assert record.bytes_sent >= len(data.partition(b"\r\n\r\n")[2]) // 2


async def test_concurrent_streams_with_the_core() -> None:
    fake = FakeProvider(token_interval=0.02, answer_tokens=5)
    results: list[DecodedItem] = []
    async with serving(fake):

        async def one(dialect: ProviderName) -> None:
            async with httpx.AsyncClient() as client:
                response = await send(client, fake, dialect, stream=True)
                results.append(decode(dialect, response.content)[-1])

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, DIALECTS[i % 4])
        await fake.wait_settled()
        await fake.wait_no_connections()
    assert len(results) == 12
    assert all(isinstance(r, Finished) for r in results)
    assert sorted(r.arrival for r in fake.attempts) == list(range(1, 13))


async def test_run_fake_provider_reports_its_url() -> None:
    urls: list[str] = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            ready = trio.Event()

            def on_ready(url: str) -> None:
                urls.append(url)
                ready.set()

            nursery.start_soon(
                functools.partial(
                    run_fake_provider, host="127.0.0.1", port=0, plan=None, seed=1, ready=on_ready
                )
            )
            await ready.wait()
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    urls[0] + "/api/chat",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
            nursery.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/")


# --------------------------------------------------------------------------- the checker

MIXED_FAULTS = FaultPlan(
    sequence=(
        Healthy(),
        RateLimited(retry_after=1.0),
        ServerError(status=503),
        ResetBeforeHeaders(),
        NoResponse(),
        StreamCut(after_tokens=1),
        Stall(after_tokens=1, then="hang"),
        MalformedChunk(),
        SlowFirstToken(seconds=0.05),
        MidStreamError(),
        MissingTerminator(),  # OpenAI, Anthropic: complete (the finish reason came)
        StreamCut(after_tokens=1, how="eof"),  # cut before the finish reason: interrupted
        Stall(after_tokens=1, seconds=5.0),  # longer than the deadline
    )
)


class SimpleClient:
    """A trivially correct client: httpx plus a dialect, a read timeout and a deadline."""

    def __init__(
        self, fake: FakeProvider, dialect: ProviderName, *, read_timeout: float | None = 0.2
    ) -> None:
        self.conn = connection(fake, dialect)
        self.dialect = dialect_for(dialect)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=read_timeout))

    def _request(self, request: ChatRequest) -> HttpRequest:
        return self.dialect.chat_request(
            request, self.conn, model=request.model, stream=request.stream
        )

    async def chat(self, request: ChatRequest) -> Completion | Failure:
        assert request.timeout is not None
        http = self._request(request)
        with trio.move_on_after(request.timeout):
            try:
                response = await self.http.request(
                    http.method, http.url, headers=http.headers, content=http.body
                )
            except httpx.TimeoutException as exc:
                return Failure.of(ErrorKind.TIMEOUT, str(exc))
            except httpx.TransportError as exc:
                return Failure.of(ErrorKind.CONNECTION, str(exc))
            if response.status_code >= 400:
                return self.dialect.classify_error(
                    response.status_code, response.headers, response.content
                )
            return self.dialect.parse_chat(response.content)
        return Failure.of(ErrorKind.DEADLINE, "deadline exceeded")

    async def stream(self, request: ChatRequest) -> AsyncIterator[DecodedItem]:
        assert request.timeout is not None
        http = self._request(request)
        decoder = self.dialect.stream_decoder()
        items: list[DecodedItem] = []
        # The whole exchange runs under the deadline before anything is yielded: a cancel
        # scope must not span a yield. The body is always read to its end or to an exception
        # (never abandoned with `break`, which leaves httpx's generators to the GC).
        with trio.move_on_after(request.timeout) as scope:
            try:
                async with self.http.stream(
                    http.method, http.url, headers=http.headers, content=http.body
                ) as response:
                    if response.status_code >= 400:
                        body = await response.aread()
                        items.append(
                            self.dialect.classify_error(
                                response.status_code, response.headers, body
                            )
                        )
                    else:
                        async for raw in response.aiter_raw():
                            items += decoder.feed(raw)
                        items += decoder.close()
            except httpx.TimeoutException as exc:
                items.append(Failure.of(ErrorKind.TIMEOUT, str(exc)))
            except httpx.TransportError as exc:
                items.append(Failure.of(ErrorKind.CONNECTION, str(exc)))
        if scope.cancelled_caught:
            items.append(Failure.of(ErrorKind.DEADLINE, "deadline exceeded"))
        for item in items:
            yield item
            if isinstance(item, Finished | Failure):
                return


def mixed_requests(stream: bool) -> list[ChatRequest]:
    return [
        ChatRequest(model="fake-model", messages=PROMPT, stream=stream, timeout=0.5)
        for _ in MIXED_FAULTS.sequence
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_simple_correct_client_passes_the_checker(dialect: ProviderName) -> None:
    async with serving(FakeProvider(plan=MIXED_FAULTS)) as fake:
        client = SimpleClient(fake, dialect)
        report = await check_client(
            client.chat, mixed_requests(False), provider=fake, close=client.http.aclose
        )
    assert len(report.outcomes) == len(MIXED_FAULTS.sequence)
    assert report.completed >= 1
    assert {"rate_limited", "overloaded", "connection", "timeout"} <= set(report.failures)
    assert len(fake.attempts) == len(MIXED_FAULTS.sequence)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_simple_correct_stream_client_passes_the_checker(dialect: ProviderName) -> None:
    async with serving(FakeProvider(plan=MIXED_FAULTS)) as fake:
        # No read timeout: the hangs and stalls run into the request's deadline instead.
        client = SimpleClient(fake, dialect, read_timeout=None)
        report = await check_stream_client(
            client.stream, mixed_requests(True), provider=fake, close=client.http.aclose
        )
    assert report.completed >= 1
    assert {"stream_interrupted", "deadline", "connection", "overloaded"} <= set(report.failures)


async def test_the_checker_sees_sockets_a_client_leaves_open() -> None:
    async with serving(FakeProvider()) as fake:
        client = SimpleClient(fake, "openai")
        with pytest.raises(InvariantViolation) as info:
            await check_client(client.chat, mixed_requests(False)[:2], provider=fake, grace=0.2)
        await client.http.aclose()
    problems = " | ".join(v.problem for v in info.value.violations)
    assert "connection(s) to the provider still open" in problems
    assert "task(s) still running" in problems  # the server's handlers of those connections
