"""`check_client` / `check_stream_client` fail deliberately broken clients and pass correct ones.

All under ``autojump_clock``: the clients here sleep on the trio clock, so deadlines and the
checker's own times are exact virtual times. The checker against a real client and a real
`FakeProvider` over loopback is in ``tests/integration/test_fake_provider.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from actors.testing._checker import (
    CheckReport,
    InvariantViolation,
    Violation,
    check_client,
    check_stream_client,
)
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Finished,
    Message,
    TextDelta,
    Usage,
)


def requests(count: int, *, timeout: float | None = 2.0) -> list[ChatRequest]:
    return [
        ChatRequest(
            model="m",
            messages=[Message(role="user", content=f"hi {i}")],
            request_id=f"req-{i}",
            timeout=timeout,
        )
        for i in range(count)
    ]


async def correct(request: ChatRequest) -> Completion | Failure:
    """Takes a second; fails the odd requests with a typed failure."""
    await trio.sleep(1)
    if request.request_id.endswith(("1", "3")):
        return Failure.of(ErrorKind.RATE_LIMITED, "slow down", request_id=request.request_id)
    return Completion(text="ok", request_id=request.request_id, usage=Usage(output_tokens=1))


async def violations_of(coro: Any) -> list[Violation]:
    with pytest.raises(InvariantViolation) as info:
        await coro
    return info.value.violations


# --------------------------------------------------------------------------- chat clients


async def test_a_correct_client_passes(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    report = await check_client(correct, requests(4))
    assert isinstance(report, CheckReport)
    assert [o.position for o in report.outcomes] == [0, 1, 2, 3]
    assert report.completed == 2
    assert report.failures == {"rate_limited": 2}
    assert {o.elapsed for o in report.outcomes} == {1.0}
    assert trio.current_time() - start == 1.0  # all at once by default


async def test_concurrency_bounds_calls_in_flight(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    report = await check_client(correct, requests(4), concurrency=2)
    assert trio.current_time() - start == 2.0
    assert sorted(o.started - start for o in report.outcomes) == [0.0, 0.0, 1.0, 1.0]


async def test_raising_request_failed_counts_as_a_typed_failure(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def raises_typed(request: ChatRequest) -> Completion:
        raise RequestFailed(Failure.of(ErrorKind.OVERLOADED, "busy"))

    report = await check_client(raises_typed, requests(2))
    assert report.failures == {"overloaded": 2}


async def test_a_client_that_hangs_past_its_deadline_fails(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def hangs(request: ChatRequest) -> Completion:
        if request.request_id == "req-1":
            await trio.sleep_forever()
        return Completion(request_id=request.request_id)

    start = trio.current_time()
    found = await violations_of(check_client(hangs, requests(3, timeout=2.0), slack=0.25))
    assert trio.current_time() - start == 2.25  # cancelled exactly at deadline + slack
    assert len(found) == 1
    assert found[0].position == 1
    assert found[0].request_id == "req-1"
    assert "did not end within its deadline" in found[0].problem
    assert "req-1" in str(found[0])


async def test_default_timeout_applies_to_requests_without_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def slow(request: ChatRequest) -> Completion:
        await trio.sleep(10)
        return Completion(request_id=request.request_id)

    start = trio.current_time()
    found = await violations_of(
        check_client(slow, requests(1, timeout=None), default_timeout=3, slack=0)
    )
    assert trio.current_time() - start == 3.0
    assert "timeout 3 s + slack 0 s" in found[0].problem


async def test_a_client_that_swallows_the_cancellation_is_still_late(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def shielded(request: ChatRequest) -> Completion:
        with trio.CancelScope(shield=True):
            await trio.sleep(5)
        return Completion(request_id=request.request_id)

    found = await violations_of(check_client(shielded, requests(1, timeout=1.0)))
    assert [v.position for v in found] == [0]
    assert "deadline" in found[0].problem


async def test_a_client_that_raises_fails(autojump_clock: trio.abc.Clock) -> None:
    async def raises(request: ChatRequest) -> Completion:
        raise ConnectionResetError("peer reset")

    found = await violations_of(check_client(raises, requests(2)))
    assert [v.position for v in found] == [0, 1]
    assert "raised ConnectionResetError: peer reset" in found[0].problem


async def test_a_client_that_returns_garbage_fails(autojump_clock: trio.abc.Clock) -> None:
    async def garbage(request: ChatRequest) -> Any:
        return {"text": "looks like a completion"}

    found = await violations_of(check_client(garbage, requests(1)))
    assert "not a Completion or Failure" in found[0].problem


async def test_a_client_that_answers_with_another_requests_result_fails(
    autojump_clock: trio.abc.Clock,
) -> None:
    first: list[Completion] = []

    async def returns_twice(request: ChatRequest) -> Completion:
        # A broken cache: the first answer is returned again, to every later request.
        if not first:
            first.append(Completion(text="x", request_id=request.request_id))
        await trio.sleep(0.1)
        return first[0]

    found = await violations_of(check_client(returns_twice, requests(3), concurrency=1))
    assert [v.position for v in found] == [1, 2]
    assert "belongs to request 'req-0'" in found[0].problem


async def test_a_leaked_background_task_fails(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as long_lived:

        async def leaks(request: ChatRequest) -> Completion:
            long_lived.start_soon(trio.sleep_forever, name="forgotten reader")
            return Completion(request_id=request.request_id)

        found = await violations_of(check_client(leaks, requests(2)))
        long_lived.cancel_scope.cancel()
    assert len(found) == 1
    assert found[0].position is None
    assert "2 task(s) still running" in found[0].problem
    assert "forgotten reader" in found[0].problem


async def test_background_tasks_that_end_after_close_are_no_leak(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as long_lived:
        stop = trio.Event()

        async def background(request: ChatRequest) -> Completion:
            long_lived.start_soon(stop.wait)
            return Completion(request_id=request.request_id)

        async def close() -> None:
            stop.set()

        report = await check_client(background, requests(2), close=close)
    assert report.completed == 2


class Provider:
    """Stands in for a FakeProvider: the checker reads only these attributes."""

    def __init__(self) -> None:
        self.open_connections = 0
        self.internal_errors: list[BaseException] = []


async def test_sockets_left_open_after_close_fail(autojump_clock: trio.abc.Clock) -> None:
    provider = Provider()

    async def opens(request: ChatRequest) -> Completion:
        provider.open_connections += 1
        return Completion(request_id=request.request_id)

    start = trio.current_time()
    found = await violations_of(check_client(opens, requests(2), provider=provider, grace=0.5))
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)  # waited for the grace
    assert "2 connection(s) to the provider still open" in found[0].problem


async def test_sockets_closed_by_close_pass(autojump_clock: trio.abc.Clock) -> None:
    provider = Provider()

    async def opens(request: ChatRequest) -> Completion:
        provider.open_connections += 1
        return Completion(request_id=request.request_id)

    async def close() -> None:
        provider.open_connections = 0

    report = await check_client(opens, requests(2), provider=provider, close=close)
    assert report.completed == 2


async def test_internal_errors_of_the_provider_and_a_failing_close_are_reported(
    autojump_clock: trio.abc.Clock,
) -> None:
    provider = Provider()
    provider.internal_errors.append(KeyError("core bug"))

    async def close() -> None:
        raise OSError("double close")

    found = await violations_of(check_client(correct, requests(1), provider=provider, close=close))
    problems = [v.problem for v in found]
    assert any("close() raised OSError: double close" in p for p in problems)
    assert any("internal errors" in p and "core bug" in p for p in problems)


async def test_all_violations_are_listed_in_the_message(autojump_clock: trio.abc.Clock) -> None:
    async def raises(request: ChatRequest) -> Completion:
        raise ValueError(request.request_id)

    with pytest.raises(InvariantViolation) as info:
        await check_client(raises, requests(25))
    message = str(info.value)
    assert message.startswith("25 invariant violation(s):")
    assert "request #0 (req-0): raised ValueError: req-0" in message
    assert "... and 5 more" in message
    assert isinstance(info.value, AssertionError)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"slack": -1.0}, "slack"),
        ({"default_timeout": math.inf}, "default_timeout"),
        ({"grace": math.nan}, "grace"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
async def test_bad_arguments_are_rejected(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await check_client(correct, requests(1), **options)


async def test_duplicate_request_ids_are_rejected() -> None:
    twice = requests(1) * 2
    with pytest.raises(ValueError, match="appears twice"):
        await check_client(correct, twice)


# --------------------------------------------------------------------------- stream clients


class Stream:
    """An async iterator over *items* (an exception item is raised) that records aclose()."""

    def __init__(self, *items: object, pause: float = 0.1) -> None:
        self.items = list(items)
        self.pause = pause
        self.closed = False

    def __aiter__(self) -> AsyncIterator[object]:
        return self

    async def __anext__(self) -> object:
        await trio.sleep(self.pause)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


DONE = Finished(finish_reason="stop", usage=Usage(output_tokens=2))


async def test_a_correct_stream_client_passes(autojump_clock: trio.abc.Clock) -> None:
    streams: list[Stream] = []

    def stream(request: ChatRequest) -> Stream:
        if request.request_id == "req-1":
            streams.append(Stream(TextDelta(text="a"), Failure.of(ErrorKind.TIMEOUT, "stall")))
        else:
            streams.append(Stream(TextDelta(text="a"), TextDelta(text="b"), DONE))
        return streams[-1]

    report = await check_stream_client(stream, requests(2))
    assert [o.events for o in report.outcomes] == [2, 1]
    assert report.outcomes[0].result == DONE
    assert report.completed == 1
    assert report.failures == {"timeout": 1}
    assert all(s.closed for s in streams)


async def test_an_async_generator_stream_client_passes(autojump_clock: trio.abc.Clock) -> None:
    async def stream(request: ChatRequest) -> AsyncIterator[object]:
        yield TextDelta(text="x")
        await trio.sleep(0.5)
        raise RequestFailed(Failure.of(ErrorKind.STREAM_INTERRUPTED, "cut"))

    report = await check_stream_client(stream, requests(1))
    assert report.failures == {"stream_interrupted": 1}
    assert report.outcomes[0].elapsed == 0.5


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ((TextDelta(text="a"), DONE, DONE), "after its final"),
        ((DONE, Failure.of(ErrorKind.TIMEOUT, "late")), "after its final"),
        ((TextDelta(text="a"),), "ended after 1 events without Finished/Failure"),
        ((TextDelta(text="a"), "junk", DONE), "not a stream event"),
        ((TextDelta(text="a"), ValueError("boom")), "raised ValueError: boom instead of"),
        ((DONE, ValueError("boom")), "raised ValueError: boom after its final"),
        ((DONE, RequestFailed(Failure.of(ErrorKind.TIMEOUT, "x"))), "after its final"),
    ],
)
async def test_a_broken_stream_client_fails(
    autojump_clock: trio.abc.Clock, items: tuple[object, ...], problem: str
) -> None:
    streams: list[Stream] = []

    def stream(request: ChatRequest) -> Stream:
        streams.append(Stream(*items))
        return streams[-1]

    found = await violations_of(check_stream_client(stream, requests(1)))
    assert len(found) == 1
    assert problem in found[0].problem
    assert streams[0].closed


async def test_a_stream_that_stalls_past_its_deadline_fails(
    autojump_clock: trio.abc.Clock,
) -> None:
    def stream(request: ChatRequest) -> Stream:
        return Stream(TextDelta(text="a"), DONE, pause=10)

    start = trio.current_time()
    found = await violations_of(check_stream_client(stream, requests(1, timeout=1.0), slack=0))
    assert trio.current_time() - start == 1.0
    assert "did not end within its deadline" in found[0].problem
