"""Issue 10 on the connection side: secrets never leave a connection, a silent provider that
hangs up is failed over like one that times out, and timeouts say what happened.

Everything runs in memory under ``autojump_clock``: `FakeTransport` for the fault kit's
faults, a few tiny httpx transports for what the kit cannot do (echo credentials, raise a
given httpx error). The loopback version of the redaction test, one per dialect through the
runtime and the gateway, is ``tests/integration/test_key_redaction.py``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio.testing import MockClock

from actors._provider import Call, Connection, ProviderActor
from actors._router import Router
from actors.testing._faults import (
    FaultPlan,
    NoResponse,
    RateLimited,
    ResetBeforeHeaders,
    Stall,
)
from actors.testing._transport import RESET_MESSAGE, FakeTransport
from protocol._classify import REDACTED, Redactor, secrets_of
from protocol._config import (
    ConnectionConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    Target,
    TimeoutConfig,
)
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import ChatRequest, Completion, Failure, Message

from .test_provider import FixedRandom, chat_request, config, connect, serving, stream_all

K = ErrorKind
KEY = "sk-proj-Zq8vT3kL9mW2xY7nB4cD6fG1hJ5pR0sU"
"""A key shaped like a real one: long, random, with a scheme prefix."""


def leaked(failure: Failure, secret: str = KEY) -> list[str]:
    """Where *secret* (or a 12-character piece of it) shows in *failure*."""
    shown = {
        "message": failure.message,
        "code": failure.code or "",
        "repr": repr(failure),
        "json": msgspec.json.encode(failure).decode(),
        "RequestFailed": str(RequestFailed(failure)),
    }
    pieces = [secret[i : i + 12] for i in range(len(secret) - 11)]
    return [where for where, text in shown.items() if any(p in text for p in pieces)]


# --------------------------------------------------------------------------- the redactor


def test_secrets_of_a_connection() -> None:
    cfg = ConnectionConfig(
        api_key=Secret(KEY),
        base_url="https://proxy.example/v1?key=url-secret-123&api-version=2024-02-01",
        headers={
            "Authorization": "Bearer header-token-456",
            "X-Portkey-Api-Key": "pk-789abcdef",
            "helicone-auth": "Basic aGVsaWNvbmU6c2VjcmV0",
            "x-trace-id": "not-a-secret-0001",
        },
    )
    assert set(secrets_of(cfg)) == {
        KEY,
        "url-secret-123",
        "header-token-456",  # the token of "Bearer ...": the scheme word stays readable
        "pk-789abcdef",
        "aGVsaWNvbmU6c2VjcmV0",
    }


def test_redactor_replaces_whole_keys_inside_longer_text_and_partial_echoes() -> None:
    r = Redactor([KEY])
    assert r.text(f"Incorrect API key provided: Bearer {KEY}.") == (
        f"Incorrect API key provided: Bearer sk-…{REDACTED}."
    )
    # Inside a longer string (a URL, JSON without spaces).
    assert r.text(f'{{"key":"x{KEY}y"}}') == f'{{"key":"xsk-…{REDACTED}y"}}'
    # A truncated or partly masked echo: any 8+ characters shared with the key.
    echoed = f"key {KEY[:14]}*** ends ...{KEY[-10:]}"
    assert r.text(echoed) == f"key {REDACTED}*** ends ...{REDACTED}"
    # A provider's own short mask ("sk-proj-****...0sU": 4 characters) is left alone, and
    # so is text without the key.
    assert r.text("sk-proj****0sU, try again") == "sk-proj****0sU, try again"
    # At most a scheme prefix of a key is shown; other secrets show nothing.
    assert Redactor(["AIzaSyA1b2C3d4E5f6G7h8"]).text("k=AIzaSyA1b2C3d4E5f6G7h8") == f"k={REDACTED}"
    # Values too short to be keys are not looked for (they would garble every message).
    assert Redactor(["abc"]).text("abc abc") == "abc abc"
    assert not Redactor([])
    assert Redactor([]).text(KEY) == KEY


def test_redactor_failure_redacts_message_and_code_and_keeps_clean_failures() -> None:
    r = Redactor([KEY])
    clean = Failure.of(K.AUTH, "HTTP 401: bad key", status=401)
    assert r.failure(clean) is clean
    dirty = Failure.of(K.AUTH, f"HTTP 401: {KEY}", status=401, code=f"bad:{KEY}")
    assert leaked(r.failure(dirty)) == []
    assert r.failure(dirty).status == 401


# --------------------------------------------------------------------------- redaction end to end


class Answer(httpx.AsyncBaseTransport):
    """A transport that answers each request with ``respond(request)``: a response, or an
    exception to raise."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response | Exception]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        answer = self.respond(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


def echo_401(request: httpx.Request) -> httpx.Response:
    """OpenAI's 401, echoing the Authorization header the way proxies do."""
    auth = request.headers.get("authorization", "")
    body = {
        "error": {
            "message": f"Incorrect API key provided: {auth}. Key starts {auth[7:20]}",
            "type": "invalid_request_error",
            "code": f"invalid_api_key {auth}",
        }
    }
    return httpx.Response(401, json=body, request=request)


def connection(
    transport: httpx.AsyncBaseTransport, provider: Any = "openai", **fields: Any
) -> Connection:
    cfg = config(provider, api_key=Secret(KEY), **fields)
    return Connection(cfg, transport=transport, rng=FixedRandom())


async def test_a_401_that_echoes_the_key_is_redacted_in_chat_and_stream(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    transport = Answer(echo_401)
    conn = connection(transport)
    async with serving(conn):
        result = await conn.chat(chat_request())
        _, streamed = await stream_all(conn, chat_request())
    assert transport.requests[0].headers["authorization"] == f"Bearer {KEY}"
    for failure in (result, streamed):
        assert isinstance(failure, Failure)
        assert failure.kind is K.AUTH
        assert leaked(failure) == []
        assert f"Bearer sk-…{REDACTED}" in failure.message
    assert KEY[:12] not in caplog.text
    assert KEY[:12] not in repr(conn.statistics())


async def test_an_error_event_in_a_stream_that_echoes_the_key_is_redacted(
    autojump_clock: MockClock,
) -> None:
    event = {"error": {"message": f"upstream rejected key {KEY}", "type": "server_error"}}
    body = b"data: " + msgspec.json.encode(event) + b"\n\n"
    transport = Answer(
        lambda request: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body, request=request
        )
    )
    conn = connection(transport, retry=RetryConfig(max_attempts=1))
    async with serving(conn):
        _, result = await stream_all(conn, chat_request())
    assert isinstance(result, Failure)
    assert result.kind is K.SERVER_ERROR
    assert leaked(result) == []


async def test_an_httpx_error_quoting_a_url_with_a_key_is_redacted(
    autojump_clock: MockClock,
) -> None:
    url_key = "AIzaSyQ-url-key-0123456789abcdef"

    def refuse(request: httpx.Request) -> Exception:
        return httpx.ConnectError(f"cannot reach {request.url}", request=request)

    conn = connection(
        Answer(refuse),
        "gemini",
        base_url=f"http://fake/v1beta?key={url_key}",
        retry=RetryConfig(max_attempts=1),
    )
    async with serving(conn):
        result = await conn.chat(chat_request())
    assert isinstance(result, Failure)
    assert result.kind is K.CONNECTION
    assert "cannot reach http://fake" in result.message
    assert leaked(result, url_key) == []


async def test_a_hot_swapped_key_is_redacted_for_requests_that_used_it(
    autojump_clock: MockClock,
) -> None:
    new_key = "sk-proj-NEWkeyNEWkeyNEWkeyNEWkey0042"
    transport = Answer(echo_401)
    conn = connection(transport)
    async with serving(conn):
        conn.override(msgspec.structs.replace(conn.config, api_key=Secret(new_key)))
        result = await conn.chat(chat_request())
    assert isinstance(result, Failure)
    assert leaked(result, new_key) == []


# --------------------------------------------------------------------------- silent, then closed


SILENT_CLOSE = ResetBeforeHeaders(after_s=20.0)
"""Takes the request, says nothing for 20 s, drops the connection."""


def test_the_silent_then_close_fault_is_plain_data() -> None:
    plan = FaultPlan.always(SILENT_CLOSE)
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert b'"after_s":20.0' in plan.to_json()
    with pytest.raises(ValueError, match="after_s"):
        ResetBeforeHeaders(after_s=-1.0)


@asynccontextmanager
async def routed(
    plans: Mapping[str, FaultPlan],
    *,
    primary: Mapping[str, Any] | None = None,
    request_timeout: float | None = None,
) -> AsyncIterator[tuple[Router, dict[str, FakeTransport]]]:
    """Connections "a" (with *primary* config fields) and "b", each behind a `FakeTransport`
    with its plan; route "smart" prefers a, then b."""
    fields: dict[str, dict[str, Any]] = {"a": dict(primary or {}), "b": {}}
    transports = {n: FakeTransport(plan=plans.get(n), seed=i) for i, n in enumerate(fields)}
    conns = {
        n: Connection(
            config(name=n, default_model=f"m-{n}", **f),
            transport=transports[n],
            rng=FixedRandom(),
        )
        for n, f in fields.items()
    }
    routes = {"smart": RouteConfig(targets=[Target(connection="a"), Target(connection="b")])}
    router = Router(conns, routes, rng=random.Random(0))
    async with trio.open_nursery() as nursery:
        for conn in conns.values():
            await nursery.start(ProviderActor(conn).run)
        yield router, transports
        for conn in conns.values():
            conn.mailbox.close()


def smart(**fields: Any) -> ChatRequest:
    return ChatRequest(model="smart", messages=[Message(role="user", content="hi")], **fields)


RETRY_3 = RetryConfig(max_attempts=3, jitter=0.0)


@pytest.mark.parametrize("streamed", [False, True])
async def test_silence_then_close_fails_over_instead_of_retrying(
    autojump_clock: MockClock, streamed: bool
) -> None:
    plans = {"a": FaultPlan.always(SILENT_CLOSE)}
    async with routed(plans, primary={"retry": RETRY_3}) as (router, fakes):
        if streamed:
            async with router.stream(smart(timeout=120.0)) as s:
                async for _ in s:
                    pass
            result = s.result
        else:
            result = await router.chat(smart(timeout=120.0))
    assert isinstance(result, Completion), result
    # One silent attempt on a, then b at once - not three 20 s attempts on a.
    assert result.connection == "b"
    assert [r.outcome for r in fakes["a"].attempts] == ["reset"]
    assert trio.current_time() == 20.0


async def test_an_immediate_close_also_fails_over(autojump_clock: MockClock) -> None:
    plans = {"a": FaultPlan.always(ResetBeforeHeaders())}
    async with routed(plans, primary={"retry": RETRY_3}) as (router, fakes):
        result = await router.chat(smart())
    assert isinstance(result, Completion), result
    assert result.connection == "b"
    assert len(fakes["a"].attempts) == 1
    assert trio.current_time() == 0.0


async def test_silence_then_close_alone_is_retried_and_says_what_happened(
    autojump_clock: MockClock,
) -> None:
    conn, fake = connect(config(retry=RETRY_3), FaultPlan.always(SILENT_CLOSE))
    async with serving(conn):
        result = await conn.chat(chat_request(), timeout=120.0)
    assert isinstance(result, Failure)
    assert (result.kind, result.attempts) == (K.CONNECTION, 3)
    assert result.message == (
        "no response 20.0s after the request was sent: connection lost while reading: "
        f"{RESET_MESSAGE}"
    )
    assert len(fake.attempts) == 3


async def test_failing_to_connect_is_not_silent_and_is_retried_in_place(
    autojump_clock: MockClock,
) -> None:
    def refuse(request: httpx.Request) -> Exception:
        return httpx.ConnectError("[Errno 111] Connection refused", request=request)

    transport = Answer(refuse)
    conn = Connection(config(retry=RETRY_3), transport=transport, rng=FixedRandom())
    async with serving(conn):
        call = Call(chat_request(), "m", failover_available=True)
        result = await conn.ask(call, deadline=trio.current_time() + 60.0)
    assert isinstance(result, Failure)
    assert (result.kind, result.attempts) == (K.CONNECTION, 3)
    assert len(transport.requests) == 3


async def test_with_default_timeouts_a_silent_provider_is_failed_over_within_the_deadline(
    autojump_clock: MockClock,
) -> None:
    defaults = TimeoutConfig()
    budget = ConnectionConfig().timeout
    assert defaults.first_token is not None, "a silent provider needs a first_token default"
    assert defaults.first_token < budget
    async with routed({"a": FaultPlan.always(NoResponse())}) as (router, fakes):
        result = await router.chat(smart())
    assert isinstance(result, Completion), result
    assert result.connection == "b"
    assert [r.outcome for r in fakes["a"].attempts] == ["hung"]
    assert trio.current_time() == defaults.first_token


# --------------------------------------------------------------------------- what timeouts say


async def test_a_deadline_waiting_for_rate_limit_capacity_names_the_earlier_attempt(
    autojump_clock: MockClock,
) -> None:
    # A 429 without retry-after parks the limiter for 1 s; the 0.5 s backoff ends first, and
    # the retry then waits for capacity until the deadline.
    plan = FaultPlan.always(RateLimited(retry_after=None, header="none"))
    conn, fake = connect(config(name="primary", retry=RETRY_3), plan)
    async with serving(conn):
        result = await conn.chat(chat_request(), timeout=0.8)
    assert isinstance(result, Failure)
    assert result.kind is K.DEADLINE
    assert result.message.startswith(
        "deadline passed waiting for rate-limit capacity on 'primary' after 1 attempt; "
        "last: HTTP 429: "
    )
    assert len(fake.attempts) == 1


async def test_a_deadline_after_attempts_says_what_they_hit(autojump_clock: MockClock) -> None:
    cfg = config(
        name="primary",
        timeouts=TimeoutConfig(first_token=3.0),
        retry=RetryConfig(max_attempts=5, jitter=0.0),
    )
    conn, fake = connect(cfg, FaultPlan.always(NoResponse()))
    async with serving(conn):
        result = await conn.chat(chat_request(), timeout=10.0)
    assert isinstance(result, Failure)
    # 0-3 s, backoff 0.5 s, 3.5-6.5 s, backoff 1 s, 7.5 s until the deadline at 10 s.
    assert (result.kind, result.attempts, trio.current_time()) == (K.DEADLINE, 3, 10.0)
    assert result.message == (
        "deadline passed after 3 attempts on 'primary' in 10.0s; "
        "attempt 3: no response yet; "
        "attempt 2: no answer within 3s (timeouts.first_token)"
    )
    assert len(fake.attempts) == 3


async def test_a_deadline_in_the_middle_of_a_stream_says_how_far_it_got(
    autojump_clock: MockClock,
) -> None:
    conn, _ = connect(config(), FaultPlan.always(Stall(after_tokens=2, then="hang")))
    async with serving(conn):
        _, result = await stream_all(conn, chat_request(), timeout=10.0)
    assert isinstance(result, Failure)
    assert result.kind is K.DEADLINE
    assert result.message == (
        "deadline passed after 1 attempt on 'c' in 10.0s; attempt 1: streaming, 2 deltas received"
    )


@pytest.mark.parametrize(
    ("plan", "timeouts", "streamed", "message"),
    [
        (
            FaultPlan.always(NoResponse()),
            TimeoutConfig(first_token=2.5),
            True,
            "no first token within 2.5s (timeouts.first_token)",
        ),
        (
            FaultPlan.always(NoResponse()),
            TimeoutConfig(first_token=2.5),
            False,
            "no answer within 2.5s (timeouts.first_token)",
        ),
        (
            FaultPlan.always(Stall(after_tokens=1, then="hang")),
            TimeoutConfig(stall=4.0),
            True,
            "stream stalled: no data for 4s (timeouts.stall)",
        ),
        (
            FaultPlan.always(Stall(after_tokens=1, then="hang")),
            TimeoutConfig(stall=4.0),
            False,
            "response stalled: no data for 4s (timeouts.stall)",
        ),
    ],
)
async def test_a_timeout_names_its_limit_and_value(
    autojump_clock: MockClock,
    plan: FaultPlan,
    timeouts: TimeoutConfig,
    streamed: bool,
    message: str,
) -> None:
    conn, _ = connect(config(timeouts=timeouts, retry=RetryConfig(max_attempts=1)), plan)
    async with serving(conn):
        if streamed:
            _, result = await stream_all(conn, chat_request())
        else:
            result = await conn.chat(chat_request())
    assert isinstance(result, Failure)
    assert (result.kind, result.message) == (K.TIMEOUT, message)


async def test_a_connect_timeout_names_its_limit_and_value(autojump_clock: MockClock) -> None:
    def slow(request: httpx.Request) -> Exception:
        return httpx.ConnectTimeout("timed out", request=request)

    cfg = config(timeouts=TimeoutConfig(connect=7.0), retry=RetryConfig(max_attempts=1))
    conn = Connection(cfg, transport=Answer(slow), rng=FixedRandom())
    async with serving(conn):
        result = await conn.chat(chat_request())
    assert isinstance(result, Failure)
    assert result.kind is K.TIMEOUT
    assert result.message == "connect timed out after 7s (timeouts.connect)"
