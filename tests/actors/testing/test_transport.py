"""FakeTransport seen through a plain ``httpx.AsyncClient``: healthy answers decode with this
project's own dialects and exact usage, every fault shows on the wire in every dialect (status,
headers, body, decoded failure kind, exact virtual timing), the budget depletes and resets,
and the attempt log records what the provider experienced, aborted attempts included."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from actors.testing._core import ProviderCore
from actors.testing._faults import (
    Budget,
    ContentFiltered,
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Latency,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    PrefillRejected,
    RateLimited,
    ResetBeforeHeaders,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)
from actors.testing._script import Chunk
from actors.testing._transport import RESET_MESSAGE, FakeTransport
from protocol._config import ConnectionConfig, ProviderName, Secret
from protocol._dialect import HttpRequest, dialect_for
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    Message,
    TextDelta,
    Usage,
)
from protocol._ratelimit import parse_rate_limit_headers

DIALECTS: tuple[ProviderName, ...] = ("openai", "anthropic", "gemini", "ollama")
BASE = {
    "openai": "http://fake/v1",
    "anthropic": "http://fake/v1",
    "gemini": "http://fake/v1beta",
    "ollama": "http://fake",
}
WALL = 1_700_000_000.0
PROMPT = [Message(role="user", content="tell me a short story")]  # 5 input tokens
K = ErrorKind
DATE = "Tue, 14 Nov 2023 22:13:23 GMT"  # WALL + 3 s


def http_request(
    dialect: ProviderName,
    *,
    stream: bool,
    messages: Sequence[Message] = PROMPT,
    max_tokens: int | None = None,
) -> HttpRequest:
    conn = ConnectionConfig(provider=dialect, base_url=BASE[dialect], api_key=Secret("sk-test"))
    req = ChatRequest(model="m", messages=list(messages), max_tokens=max_tokens)
    return dialect_for(dialect).chat_request(req, conn, model="m", stream=stream)


@dataclass
class Exchange:
    """What the client saw: status and headers (if any), body chunks with their arrival
    times, the exception that ended the exchange (if any), and the timing."""

    started: float
    status: int | None = None
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    head_at: float | None = None
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    error: Exception | None = None
    ended_at: float | None = None

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    def at(self, t: float | None) -> float | None:
        return None if t is None else t - self.started


async def exchange(
    transport: FakeTransport, http: HttpRequest, seen: Exchange | None = None
) -> Exchange:
    """Send *http* and read the whole response, recording into *seen* (pass one in to keep
    what was seen when the caller cancels the exchange)."""
    if seen is None:
        seen = Exchange(started=trio.current_time())
    async with httpx.AsyncClient(transport=transport) as client:
        try:
            request = client.build_request(
                http.method, http.url, headers=http.headers, content=http.body
            )
            response = await client.send(request, stream=True)
            seen.status, seen.headers = response.status_code, response.headers
            seen.head_at = trio.current_time()
            try:
                async for data in response.aiter_raw():
                    seen.chunks.append((trio.current_time(), data))
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            seen.error = exc
    seen.ended_at = trio.current_time()
    return seen


def decode(dialect: ProviderName, body: bytes) -> list[DecodedItem]:
    decoder = dialect_for(dialect).stream_decoder()
    return [*decoder.feed(body), *decoder.close()]


def text_of(items: Sequence[DecodedItem]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextDelta))


SEED, ANSWER_TOKENS = 3, 6


def expected_text(dialect: ProviderName, tokens: int | None = None) -> str:
    """The text of a healthy answer to PROMPT (its first *tokens* words), asked of a twin
    core with the same seed."""
    twin = ProviderCore(seed=SEED, answer_tokens=ANSWER_TOKENS)
    http = http_request(dialect, stream=False)
    path = http.url.removeprefix("http://fake").split("?")[0]
    script = twin.respond(
        method="POST", path=path, query="", headers={}, body=http.body, now=0, wall=WALL
    )
    body = b"".join(s.data for s in script.steps if isinstance(s, Chunk))
    completion = dialect_for(dialect).parse_chat(body)
    assert isinstance(completion, Completion)
    words = completion.text.split(" ")
    return " ".join(words[:tokens]) if tokens is not None else completion.text


def transport(fault: Fault | None = None, **options: Any) -> FakeTransport:
    plan = FaultPlan.always(fault) if fault is not None else None
    return FakeTransport(
        plan=plan, seed=SEED, wall_start=WALL, answer_tokens=ANSWER_TOKENS, **options
    )


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_healthy_stream_decodes_with_exact_usage(dialect: ProviderName) -> None:
    fake = transport()
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.status == 200
    assert seen.error is None
    items = decode(dialect, seen.body)
    finished = items[-1]
    assert isinstance(finished, Finished), items[-1]
    assert finished.finish_reason == "stop"
    assert finished.usage == Usage(input_tokens=5, output_tokens=6)
    assert text_of(items) == expected_text(dialect)
    assert len(text_of(items).split()) == 6
    record = fake.attempts[0]
    assert (record.outcome, record.status, record.fault) == ("completed", 200, "healthy")
    assert record.tokens_emitted == 6
    assert record.usage_reported == finished.usage
    assert record.bytes_sent == len(seen.body)
    assert record.headers.get("authorization", record.headers.get("x-api-key", "")) in (
        "Bearer sk-test",
        "sk-test",
        "",
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_healthy_non_stream_decodes_with_exact_usage(dialect: ProviderName) -> None:
    fake = transport()
    seen = await exchange(fake, http_request(dialect, stream=False, max_tokens=4))
    assert seen.status == 200
    assert seen.headers["content-length"] == str(len(seen.body))
    completion = dialect_for(dialect).parse_chat(seen.body)
    assert isinstance(completion, Completion), completion
    assert completion.usage == Usage(input_tokens=5, output_tokens=4)
    assert completion.finish_reason == "length"
    assert completion.text == expected_text(dialect, 4)
    assert fake.attempts[0].usage_reported == completion.usage


@pytest.mark.parametrize("dialect", ["openai", "gemini", "ollama"])
async def test_embeddings_decode(dialect: ProviderName) -> None:
    fake = transport(embedding_dimensions=5)
    conn = ConnectionConfig(provider=dialect, base_url=BASE[dialect])
    d = dialect_for(dialect)
    http = d.embed_request(EmbedRequest(model="e", inputs=["one two", "three"]), conn, model="e")
    seen = await exchange(fake, http)
    assert seen.status == 200
    result = d.parse_embed(seen.body)
    assert isinstance(result, Embeddings), result
    assert [len(v) for v in result.vectors] == [5, 5]
    if dialect != "gemini":  # Gemini's embedding responses carry no usage
        assert result.usage.input_tokens == 3


async def test_anthropic_credentials_are_recorded_but_not_shown() -> None:
    fake = transport()
    await exchange(fake, http_request("anthropic", stream=False))
    record = fake.attempts[0]
    assert record.headers["x-api-key"] == "sk-test"
    assert "sk-test" not in repr(record)


# --------------------------------------------------------------------------- error statuses

ERROR_CASES: list[tuple[Fault, int, ErrorKind]] = [
    (RateLimited(retry_after=3), 429, K.RATE_LIMITED),
    (ServerError(status=500), 500, K.SERVER_ERROR),
    (ServerError(status=503), 503, K.OVERLOADED),
    (ServerError(status=529), 529, K.OVERLOADED),
    (Unauthorized(), 401, K.AUTH),
    (ContextLengthExceeded(), 400, K.CONTEXT_LENGTH),
    (ContentFiltered(), 400, K.CONTENT_FILTER),
    (PrefillRejected(), 400, K.UNSUPPORTED),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("fault", "status", "kind"), ERROR_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_error_faults_classify_in_every_dialect(
    dialect: ProviderName, fault: Fault, status: int, kind: ErrorKind, stream: bool
) -> None:
    fake = transport(fault)
    messages = PROMPT
    if isinstance(fault, PrefillRejected):
        messages = [*PROMPT, Message(role="assistant", content="Once upon")]
    seen = await exchange(fake, http_request(dialect, stream=stream, messages=messages))
    assert seen.status == status
    failure = dialect_for(dialect).classify_error(status, seen.headers, seen.body, now=WALL)
    assert failure.kind == kind, failure
    json.loads(seen.body)  # every error body is JSON
    record = fake.attempts[0]
    assert (record.fault, record.status, record.outcome) == (fault.name, status, "completed")
    assert record.usage_reported is None
    assert record.tokens_emitted == 0


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_prefill_rejection_only_hits_requests_ending_with_the_assistant(
    dialect: ProviderName,
) -> None:
    fake = transport(PrefillRejected())
    seen = await exchange(fake, http_request(dialect, stream=False))
    assert seen.status == 200
    assert fake.attempts[0].fault == "healthy"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("fault", "header", "value"),
    [
        (RateLimited(retry_after=2.5, header="seconds"), "retry-after", "3"),
        (RateLimited(retry_after=2.5, header="ms"), "retry-after-ms", "2500"),
        (RateLimited(retry_after=2.5, header="date"), "retry-after", DATE),
        (RateLimited(retry_after=2.5, header="none"), None, None),
        (RateLimited(retry_after=None), None, None),
    ],
)  # fmt: skip
async def test_rate_limited_retry_after_forms(
    dialect: ProviderName, fault: RateLimited, header: str | None, value: str | None
) -> None:
    fake = transport(fault)
    seen = await exchange(fake, http_request(dialect, stream=False))
    assert seen.status == 429
    names = {"retry-after", "retry-after-ms"}
    present = {k: v for k, v in seen.headers.items() if k in names}
    assert present == ({header: value} if header else {})
    if fault.header == "date":
        assert value is not None
        assert email.utils.parsedate_to_datetime(value).timestamp() == WALL + 3
    failure = dialect_for(dialect).classify_error(429, seen.headers, seen.body, now=WALL)
    assert failure.kind == K.RATE_LIMITED
    if header == "retry-after-ms":
        assert failure.retry_after == 2.5
    elif header:
        assert failure.retry_after == 3.0
    if dialect == "gemini":
        details = json.loads(seen.body)["error"]["details"]
        delays = [d["retryDelay"] for d in details if d["@type"].endswith("RetryInfo")]
        assert delays == (["2.5s"] if header else [])
        if header is None and fault.retry_after is not None:
            assert failure.retry_after is None
    elif header is None:
        assert failure.retry_after is None


async def test_error_bodies_have_each_dialects_exact_shape() -> None:
    shapes = {}
    for dialect in DIALECTS:
        fake = transport(ServerError(status=503))
        shapes[dialect] = (await exchange(fake, http_request(dialect, stream=False))).body
    assert shapes["openai"] == (
        b'{\n    "error": {\n        "message": "The engine is currently overloaded, please try '
        b'again later.",\n        "type": "service_unavailable_error",\n        "param": null,\n'
        b'        "code": null\n    }\n}\n'
    )
    anthropic = json.loads(shapes["anthropic"])
    assert shapes["anthropic"] == json.dumps(anthropic, separators=(",", ":")).encode()
    assert list(anthropic) == ["type", "error", "request_id"]
    assert anthropic["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert json.loads(shapes["gemini"]) == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    assert shapes["gemini"].startswith(b'{\n  "error": {\n    "code": 503,')
    assert shapes["ollama"] == (
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    )


# --------------------------------------------------------------------------- connection faults


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_reset_before_headers(
    dialect: ProviderName, stream: bool, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(ResetBeforeHeaders())
    seen = await exchange(fake, http_request(dialect, stream=stream))
    assert isinstance(seen.error, httpx.ReadError)
    assert str(seen.error) == RESET_MESSAGE
    assert seen.status is None
    record = fake.attempts[0]
    assert (record.outcome, record.status, record.bytes_sent) == ("reset", None, 0)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_response_hangs_until_the_client_gives_up(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(NoResponse())
    start = trio.current_time()
    with trio.move_on_after(42) as scope:
        await exchange(fake, http_request(dialect, stream=True))
    assert scope.cancelled_caught
    assert trio.current_time() - start == 42
    record = fake.attempts[0]
    assert (record.outcome, record.status, record.ended_at) == ("hung", None, 42)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_latency_delays_the_head_exactly(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(Latency(seconds=3.5))
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.at(seen.head_at) == 3.5
    assert seen.at(seen.ended_at) == 3.5
    assert isinstance(decode(dialect, seen.body)[-1], Finished)
    assert fake.attempts[0].ended_at == 3.5


async def test_random_latency_is_seeded(autojump_clock: trio.testing.MockClock) -> None:
    async def delays(seed: int) -> list[float]:
        fake = FakeTransport(plan=FaultPlan.always(Latency(seconds=1, up_to=5)), seed=seed)
        out = []
        for _ in range(5):
            seen = await exchange(fake, http_request("openai", stream=False))
            at = seen.at(seen.head_at)
            assert at is not None
            out.append(at)
        return out

    first = await delays(1)
    assert all(1 <= d <= 5 for d in first)
    assert len(set(first)) == 5
    assert await delays(1) == pytest.approx(first)
    assert await delays(2) != pytest.approx(first)


async def test_client_leaving_during_latency_is_client_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = transport(Latency(seconds=10))
    with trio.move_on_after(4):
        await exchange(fake, http_request("openai", stream=False))
    record = fake.attempts[0]
    assert (record.outcome, record.status, record.ended_at) == ("client_closed", None, 4)


# --------------------------------------------------------------------------- body faults


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_slow_first_token(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(SlowFirstToken(seconds=5))
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.at(seen.head_at) == 0
    assert seen.at(seen.chunks[0][0]) == 5
    assert isinstance(decode(dialect, seen.body)[-1], Finished)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_slow_first_token_non_streamed_delays_the_body(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(SlowFirstToken(seconds=5))
    seen = await exchange(fake, http_request(dialect, stream=False))
    assert seen.at(seen.head_at) == 0
    assert seen.at(seen.ended_at) == 5
    assert isinstance(dialect_for(dialect).parse_chat(seen.body), Completion)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stream_cut_with_reset(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(StreamCut(after_tokens=2, how="reset"))
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.status == 200
    assert isinstance(seen.error, httpx.ReadError)
    assert text_of(decode(dialect, seen.body)) == expected_text(dialect, 2)
    record = fake.attempts[0]
    assert (record.outcome, record.tokens_emitted, record.usage_reported) == ("reset", 2, None)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("fault", [StreamCut(after_tokens=2, how="eof"), MissingTerminator()])
async def test_clean_end_without_terminator_is_interrupted_unless_finished(
    dialect: ProviderName, fault: Fault
) -> None:
    fake = transport(fault)
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.status == 200
    assert seen.error is None
    items = decode(dialect, seen.body)
    last = items[-1]
    if isinstance(fault, MissingTerminator) and dialect in ("openai", "anthropic"):
        # Their finish reason came before the missing terminator: a complete answer.
        assert isinstance(last, Finished), items
    else:
        assert isinstance(last, Failure), items
        assert last.kind in (K.STREAM_INTERRUPTED, K.PROTOCOL)
    tokens = 2 if isinstance(fault, StreamCut) else 6
    assert text_of(items) == expected_text(dialect, tokens)
    record = fake.attempts[0]
    assert (record.outcome, record.tokens_emitted) == ("completed", tokens)
    if isinstance(fault, StreamCut):
        assert record.usage_reported is None


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("then", ["continue", "hang"])
async def test_stall_mid_stream(
    dialect: ProviderName, then: str, autojump_clock: trio.testing.MockClock
) -> None:
    fake = transport(Stall(after_tokens=2, seconds=7, then=then))  # type: ignore[arg-type]
    with trio.move_on_after(100):
        seen = await exchange(fake, http_request(dialect, stream=True))
    record = fake.attempts[0]
    if then == "continue":
        times = [seen.at(t) for t, _ in seen.chunks]
        assert times[0] == 0
        assert times[-1] == 7
        assert isinstance(decode(dialect, seen.body)[-1], Finished)
        assert (record.outcome, record.ended_at, record.tokens_emitted) == ("completed", 7, 6)
    else:
        assert (record.outcome, record.ended_at, record.tokens_emitted) == ("hung", 100, 2)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_chunk_breaks_the_decoder(dialect: ProviderName) -> None:
    fake = transport(MalformedChunk(after_tokens=3))
    seen = await exchange(fake, http_request(dialect, stream=True))
    items = decode(dialect, seen.body)
    failure = items[-1]
    assert isinstance(failure, Failure), items
    assert failure.kind in (K.PROTOCOL, K.STREAM_INTERRUPTED)
    assert text_of(items) == expected_text(dialect, 3)
    assert fake.attempts[0].tokens_emitted == 6  # the stream itself went on to the end


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_mid_stream_error_event(dialect: ProviderName) -> None:
    fake = transport(MidStreamError(after_tokens=2))
    seen = await exchange(fake, http_request(dialect, stream=True))
    assert seen.status == 200
    items = decode(dialect, seen.body)
    failure = items[-1]
    assert isinstance(failure, Failure), items
    expected = {"openai": K.SERVER_ERROR, "anthropic": K.OVERLOADED, "gemini": K.OVERLOADED}
    assert failure.kind == expected.get(dialect, K.SERVER_ERROR)
    assert text_of(items) == expected_text(dialect, 2)
    assert fake.attempts[0].tokens_emitted == 2


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_non_streamed_body_faults(
    dialect: ProviderName, autojump_clock: trio.testing.MockClock
) -> None:
    d = dialect_for(dialect)
    cut = await exchange(transport(StreamCut(how="reset")), http_request(dialect, stream=False))
    assert isinstance(cut.error, httpx.ReadError)
    eof = await exchange(transport(StreamCut(how="eof")), http_request(dialect, stream=False))
    assert eof.error is None
    assert isinstance(d.parse_chat(eof.body), Failure)
    bad = await exchange(transport(MalformedChunk()), http_request(dialect, stream=False))
    assert bad.headers["content-length"] == str(len(bad.body))
    parsed = d.parse_chat(bad.body)
    assert isinstance(parsed, Failure)
    assert parsed.kind == K.PROTOCOL
    stall_fake = transport(Stall(seconds=9))
    stall = await exchange(stall_fake, http_request(dialect, stream=False))
    assert stall.at(stall.ended_at) == 9
    assert isinstance(d.parse_chat(stall.body), Completion)
    # Stream-only faults leave non-streamed requests healthy.
    healthy = await exchange(transport(MidStreamError()), http_request(dialect, stream=False))
    assert isinstance(d.parse_chat(healthy.body), Completion)


# --------------------------------------------------------------------------- the attempt log


async def test_client_cancelling_mid_stream_is_client_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = transport(token_interval=1.0)
    seen = Exchange(started=trio.current_time())
    with trio.move_on_after(2.5):
        await exchange(fake, http_request("openai", stream=True), seen)
    assert [seen.at(t) for t, _ in seen.chunks] == [0, 0, 1, 2]  # role chunk, then a token/s
    record = fake.attempts[0]
    assert (record.outcome, record.ended_at, record.tokens_emitted) == ("client_closed", 2.5, 3)
    assert record.usage_reported is None
    assert record.status == 200
    assert record.bytes_sent == len(seen.body)


async def test_client_closing_before_reading_is_client_closed() -> None:
    fake = transport()
    async with httpx.AsyncClient(transport=fake, base_url="http://fake") as client:
        http = http_request("ollama", stream=True)
        request = client.build_request("POST", http.url, content=http.body)
        response = await client.send(request, stream=True)
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        await response.aclose()
    record = fake.attempts[0]
    assert (record.outcome, record.status, record.bytes_sent, record.tokens_emitted) == (
        "client_closed",
        200,
        0,
        0,
    )


async def test_attempt_log_across_a_sequence(autojump_clock: trio.testing.MockClock) -> None:
    plan = FaultPlan(
        sequence=(ServerError(), ResetBeforeHeaders(), NoResponse(), Latency(seconds=2))
    )
    fake = FakeTransport(plan=plan, wall_start=WALL)
    for _ in range(2):
        await exchange(fake, http_request("anthropic", stream=True))
    with trio.move_on_after(5):
        await exchange(fake, http_request("anthropic", stream=True))
    await exchange(fake, http_request("anthropic", stream=True))
    log = [
        (r.arrival, r.fault, r.status, r.outcome, r.arrived_at, r.ended_at) for r in fake.attempts
    ]
    assert log == [
        (1, "server_error", 500, "completed", 0, 0),
        (2, "reset_before_headers", None, "reset", 0, 0),
        (3, "no_response", None, "hung", 0, 5),
        (4, "latency", 200, "completed", 5, 7),
    ]
    assert isinstance(fake.core, ProviderCore)
    assert fake.core.attempts_for("m") == fake.attempts
    assert fake.core.in_flight() == []


def test_transport_arguments_are_exclusive() -> None:
    with pytest.raises(TypeError, match="either core"):
        FakeTransport(core=ProviderCore(), plan=FaultPlan())


# --------------------------------------------------------------------------- budget


async def test_budget_through_the_transport(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeTransport(budget=Budget(requests_per_minute=2), wall_start=WALL)
    statuses = []
    for _ in range(3):
        seen = await exchange(fake, http_request("openai", stream=False))
        statuses.append(seen.status)
        info = parse_rate_limit_headers(seen.headers, now=WALL)
    assert statuses == [200, 200, 429]
    assert info.remaining_requests == 0
    assert info.reset_requests == 60.0
    assert info.retry_after == 60.0
    await trio.sleep(info.retry_after)
    again = await exchange(fake, http_request("openai", stream=False))
    assert again.status == 200
    assert parse_rate_limit_headers(again.headers, now=WALL).remaining_requests == 1
    assert [r.fault for r in fake.attempts] == [
        "healthy",
        "healthy",
        "budget_exhausted",
        "healthy",
    ]
