"""Every httpx exception is translated, at one boundary, to a typed Failure."""

from __future__ import annotations

import inspect

import httpx
import pytest

from actors._http_errors import EXCEPTION_TABLE, failure_from_exception, is_httpx_error
from protocol._errors import ErrorKind


def httpx_exception_classes() -> list[type[BaseException]]:
    return [c for c in vars(httpx).values() if inspect.isclass(c) and issubclass(c, BaseException)]


def test_every_httpx_exception_class_is_in_the_table() -> None:
    mapped = {cls for cls, *_ in EXCEPTION_TABLE}
    missing = [c.__name__ for c in httpx_exception_classes() if c not in mapped]
    assert not missing, f"httpx exceptions without an explicit mapping: {missing}"


def test_table_is_ordered_most_specific_first() -> None:
    classes = [cls for cls, *_ in EXCEPTION_TABLE]
    for i, cls in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, cls), f"{later.__name__} is shadowed by {cls.__name__}"


def make(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, httpx.HTTPStatusError):
        req = httpx.Request("GET", "http://x")
        return cls("boom", request=req, response=httpx.Response(500, request=req))
    no_args = (
        httpx.StreamConsumed,
        httpx.StreamClosed,
        httpx.ResponseNotRead,
        httpx.RequestNotRead,
    )
    if cls in no_args:
        return cls()
    return cls("boom")


@pytest.mark.parametrize("cls", httpx_exception_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("streaming", [False, True])
def test_each_class_maps_to_a_failure(cls: type[BaseException], streaming: bool) -> None:
    exc = make(cls)
    assert is_httpx_error(exc)
    failure = failure_from_exception(exc, streaming=streaming)
    assert isinstance(failure.kind, ErrorKind)
    assert failure.message


def test_reset_before_and_during_the_body() -> None:
    exc = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert failure_from_exception(exc, streaming=False).kind is ErrorKind.CONNECTION
    assert failure_from_exception(exc, streaming=True).kind is ErrorKind.STREAM_INTERRUPTED
    assert failure_from_exception(httpx.ConnectTimeout("t"), streaming=False).kind is (
        ErrorKind.TIMEOUT
    )


def test_non_httpx_exception_is_refused() -> None:
    with pytest.raises(TypeError):
        failure_from_exception(ValueError("x"), streaming=False)
    assert not is_httpx_error(ValueError("x"))
