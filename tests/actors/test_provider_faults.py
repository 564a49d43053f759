"""The fault matrix: every fault of the kit x streamed and not x every dialect.

Each case runs one request through a `Connection` + `ProviderActor` against `FakeTransport`
under ``autojump_clock``, with jitter fixed (``rng.random() == 0.5``), so the default retry
policy (3 attempts, 0.5 s doubling, 25 % jitter) retries after exactly 0.4375 s and then
0.875 s. For every case we check:

- exactly one terminal result (a `Completion` or a `Failure`, nothing raised), of the
  expected `ErrorKind`;
- the attempts the fake saw: how many, and exactly when each arrived;
- when the result arrived;
- usage recorded once: the metrics equal the sum of the usage the fake delivered (plus, for a
  stream cut after the provider already reported partial usage, exactly the failure's usage);
- nothing leaked: no attempt is still open at the fake, and the actor's nursery closes.

Combinations that make no sense (stream-only faults for non-streamed requests) are not
generated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import trio

from actors.testing._faults import (
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
from protocol._config import ProviderName, TimeoutConfig
from protocol._errors import ErrorKind
from protocol._messages import ChatRequest, Completion, Failure, Message, TextDelta

from .test_provider import (
    DIALECTS,
    chat_request,
    config,
    connect,
    recorded,
    reported,
    serving,
    stream_all,
    tokens,
)

K = ErrorKind
RETRIES = (0.0, 0.4375, 1.3125)
"""Arrival times of three immediately failing attempts under the default policy."""


class Expect(NamedTuple):
    kind: ErrorKind | None  # None: a Completion
    times: tuple[float, ...]  # arrival time of each attempt at the fake
    end: float  # when the result arrived
    retry_after: float | None = None
    emitted: bool = False  # stream events reached the caller before the failure


class Case(NamedTuple):
    name: str
    plan: FaultPlan
    expect: Any  # (dialect, streamed) -> Expect
    modes: tuple[bool, ...] = (False, True)  # streamed?
    timeouts: TimeoutConfig = TimeoutConfig()
    timeout: float = 60.0
    prefill: bool = False


def always(fault: Fault) -> FaultPlan:
    return FaultPlan.always(fault)


def fixed(expect: Expect) -> Any:
    return lambda dialect, streamed: expect


MID_STREAM_KIND: dict[ProviderName, ErrorKind] = {
    "openai": K.SERVER_ERROR,
    "anthropic": K.OVERLOADED,
    "gemini": K.OVERLOADED,
    "ollama": K.SERVER_ERROR,
}


def retried_three_times(kind: ErrorKind, each: float = 0.0) -> Expect:
    """Three attempts that each fail after *each* seconds, with the default backoff."""
    t1 = each + 0.4375
    t2 = t1 + each + 0.875
    return Expect(kind, (0.0, t1, t2), t2 + each)


FIRST_TOKEN_5 = TimeoutConfig(first_token=5.0)
STALL_5 = TimeoutConfig(stall=5.0)

CASES: list[Case] = [
    Case("healthy", FaultPlan.healthy(), fixed(Expect(None, (0.0,), 0.0))),
    Case("latency", always(Latency(seconds=2.0)), fixed(Expect(None, (0.0,), 2.0))),
    # 429s: the delay is exactly the provider's Retry-After, in each of its forms.
    Case(
        "429-seconds",
        always(RateLimited(retry_after=2.0, header="seconds")),
        fixed(Expect(K.RATE_LIMITED, (0.0, 2.0, 4.0), 4.0, retry_after=2.0)),
    ),
    Case(
        "429-ms",
        always(RateLimited(retry_after=1.5, header="ms")),
        lambda d, s: Expect(
            K.RATE_LIMITED,
            (0.0, 1.5, 3.0),
            3.0,
            # Gemini's body carries RetryInfo.retryDelay "1.5s" too; the header wins.
            retry_after=1.5,
        ),
    ),
    Case(
        "429-date",
        always(RateLimited(retry_after=2.0, header="date")),
        fixed(Expect(K.RATE_LIMITED, (0.0, 2.0, 4.0), 4.0, retry_after=2.0)),
    ),
    # No Retry-After: the limiter parks for 1 s, which outlasts the jittered backoff.
    Case(
        "429-none",
        always(RateLimited(retry_after=2.0, header="none")),
        fixed(Expect(K.RATE_LIMITED, (0.0, 1.0, 2.0), 2.0)),
    ),
    Case("500-once", FaultPlan.server_error_once(), fixed(Expect(None, (0.0, 0.4375), 0.4375))),
    Case("503", always(ServerError(status=503)), fixed(retried_three_times(K.OVERLOADED))),
    Case("529", always(ServerError(status=529)), fixed(retried_three_times(K.OVERLOADED))),
    Case("reset", always(ResetBeforeHeaders()), fixed(retried_three_times(K.CONNECTION))),
    Case(
        "no-response-first-token",
        always(NoResponse()),
        fixed(retried_three_times(K.TIMEOUT, each=5.0)),
        timeouts=FIRST_TOKEN_5,
    ),
    Case(
        "no-response-deadline",
        always(NoResponse()),
        fixed(Expect(K.DEADLINE, (0.0,), 10.0)),
        timeout=10.0,
    ),
    Case(
        "slow-first-token-under",
        always(SlowFirstToken(seconds=3.0)),
        fixed(Expect(None, (0.0,), 3.0)),
        timeouts=FIRST_TOKEN_5,
    ),
    Case(
        "slow-first-token-over",
        always(SlowFirstToken(seconds=8.0)),
        fixed(retried_three_times(K.TIMEOUT, each=5.0)),
        timeouts=FIRST_TOKEN_5,
    ),
    # Cut after 3 tokens: a stream fails once events were relayed; a non-streamed body is
    # cut in half before anything reached the caller, so it is retried.
    Case(
        "stream-cut",
        always(StreamCut(after_tokens=3)),
        lambda d, s: (
            Expect(K.STREAM_INTERRUPTED, (0.0,), 0.0, emitted=True)
            if s
            else retried_three_times(K.STREAM_INTERRUPTED)
        ),
    ),
    Case(
        "stream-cut-eof",
        always(StreamCut(after_tokens=3, how="eof")),
        lambda d, s: (
            Expect(K.STREAM_INTERRUPTED, (0.0,), 0.0, emitted=True)
            if s
            else retried_three_times(K.PROTOCOL)
        ),
    ),
    # Cut before the first token: retried transparently, also when streamed.
    Case(
        "stream-cut-before-first-token",
        always(StreamCut(after_tokens=0)),
        fixed(retried_three_times(K.STREAM_INTERRUPTED)),
        modes=(True,),
    ),
    Case(
        "stall",
        always(Stall(after_tokens=3, seconds=30.0)),
        lambda d, s: (
            Expect(K.TIMEOUT, (0.0,), 5.0, emitted=True)
            if s
            else retried_three_times(K.TIMEOUT, each=5.0)
        ),
        timeouts=STALL_5,
    ),
    Case(
        "stall-under-limit",
        always(Stall(after_tokens=3, seconds=4.0)),
        fixed(Expect(None, (0.0,), 4.0)),
        timeouts=STALL_5,
    ),
    Case(
        "malformed-chunk",
        always(MalformedChunk(after_tokens=3)),
        lambda d, s: (
            Expect(K.PROTOCOL, (0.0,), 0.0, emitted=True) if s else retried_three_times(K.PROTOCOL)
        ),
    ),
    Case(
        "missing-terminator",
        always(MissingTerminator()),
        # OpenAI's and Anthropic's finish reason came before the missing terminator: a
        # complete answer. Gemini's and Ollama's terminator is the finish reason itself.
        lambda d, s: (
            Expect(None, (0.0,), 0.0)
            if d in ("openai", "anthropic")
            else Expect(K.STREAM_INTERRUPTED, (0.0,), 0.0, emitted=True)
        ),
        modes=(True,),
    ),
    Case(
        "mid-stream-error",
        always(MidStreamError(after_tokens=3)),
        lambda d, s: Expect(MID_STREAM_KIND[d], (0.0,), 0.0, emitted=True),
        modes=(True,),
    ),
    Case(
        "mid-stream-error-before-first-token",
        always(MidStreamError(after_tokens=0)),
        lambda d, s: retried_three_times(MID_STREAM_KIND[d]),
        modes=(True,),
    ),
    Case(
        "context-length",
        always(ContextLengthExceeded()),
        fixed(Expect(K.CONTEXT_LENGTH, (0.0,), 0.0)),
    ),
    Case("content-filter", always(ContentFiltered()), fixed(Expect(K.CONTENT_FILTER, (0.0,), 0.0))),
    Case(
        "prefill-rejected",
        always(PrefillRejected()),
        fixed(Expect(K.UNSUPPORTED, (0.0,), 0.0)),
        prefill=True,
    ),
    Case("401", always(Unauthorized()), fixed(Expect(K.AUTH, (0.0,), 0.0))),
    Case(
        "flapping",
        FaultPlan.flapping(1.0),
        fixed(Expect(None, RETRIES, 1.3125)),
    ),
]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for streamed in case.modes:
            for dialect in DIALECTS:
                mode = "stream" if streamed else "plain"
                params.append(
                    pytest.param(case, streamed, dialect, id=f"{case.name}-{mode}-{dialect}")
                )
    return params


def _request(case: Case) -> ChatRequest:
    if not case.prefill:
        return chat_request()
    return ChatRequest(
        model="m",
        messages=[
            Message(role="user", content="hi"),
            Message(role="assistant", content="Once upon"),
        ],
    )


@pytest.mark.parametrize(("case", "streamed", "dialect"), _params())
async def test_fault_matrix(
    case: Case, streamed: bool, dialect: ProviderName, autojump_clock: Any
) -> None:
    expect: Expect = case.expect(dialect, streamed)
    cfg = config(dialect, timeout=case.timeout, timeouts=case.timeouts)
    conn, fake = connect(cfg, case.plan)
    request = _request(case)
    events: list[Any] = []
    with trio.fail_after(600):
        async with serving(conn):
            if streamed:
                events, result = await stream_all(conn, request)
            else:
                result = await conn.chat(request)
            ended = trio.current_time()
    # One terminal result, of the expected kind, at the expected time.
    if expect.kind is None:
        assert isinstance(result, Completion), result
    else:
        assert isinstance(result, Failure), result
        assert result.kind is expect.kind, result
        assert result.connection == "c"
        assert result.model == "m"
        if expect.retry_after is not None:
            assert result.retry_after == expect.retry_after
        assert result.retryable == (result.kind in cfg.retry.retry_on and not expect.emitted), (
            result
        )
    assert ended == pytest.approx(expect.end, abs=1e-9)
    # The attempts the retry policy prescribes, exactly when it prescribes them.
    attempts = fake.attempts
    assert [a.arrived_at for a in attempts] == pytest.approx(list(expect.times), abs=1e-9)
    assert result.attempts == len(expect.times)
    assert all(a.stream is streamed for a in attempts)
    # Nothing left open at the fake.
    assert all(a.outcome is not None for a in attempts), attempts
    # Streamed events: text only when the case says events were emitted before a failure.
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    if isinstance(result, Completion):
        assert result.time_to_first_token is not None
        if streamed:
            assert text == result.text
    else:
        assert bool(events) is expect.emitted
    # Usage recorded exactly once per attempt.
    snap = conn.metrics.snapshot()
    assert snap.attempts == len(attempts)
    delivered = reported(attempts)
    if isinstance(result, Completion):
        assert tokens(recorded(conn)) == tokens(delivered)
        assert tokens(result.usage) == tokens(attempts[-1].usage_reported)
    else:
        # A failure carries the usage of all its attempts; the metrics hold exactly that.
        # Non-streamed bodies are decoded whole, so that is what the fake delivered. A
        # broken stream may carry usage the provider reported so far (Anthropic's
        # message_start, Gemini's per-chunk usageMetadata), never more output than planned
        # (Anthropic's message_start counts 1 output token even when none follows).
        assert tokens(recorded(conn)) == tokens(result.usage)
        if not streamed:
            assert tokens(recorded(conn)) == tokens(delivered)
        planned = sum(max(1, a.tokens_planned) for a in attempts)
        assert recorded(conn).output_tokens <= planned
        assert snap.completions == 0
        assert snap.failures == {result.kind.value: 1}
