"""Exception-group helpers."""

from __future__ import annotations

import pytest
import trio

from actors._groups import first_error, only_cancelled, sole_error


def cancelled() -> trio.Cancelled:
    return trio.Cancelled._create()


def test_only_cancelled() -> None:
    assert only_cancelled(cancelled())
    assert only_cancelled(
        BaseExceptionGroup("g", [cancelled(), BaseExceptionGroup("h", [cancelled()])])
    )
    assert not only_cancelled(BaseExceptionGroup("g", [cancelled(), KeyError()]))
    assert not only_cancelled(KeyError())


def test_sole_error_unwraps_one_real_exception() -> None:
    err = KeyError("x")
    assert sole_error(err) is err
    assert sole_error(BaseExceptionGroup("g", [cancelled(), BaseExceptionGroup("h", [err])])) is err
    assert sole_error(BaseExceptionGroup("g", [err, ValueError()])) is None
    assert sole_error(BaseExceptionGroup("g", [cancelled()])) is None


def test_first_error_for_messages() -> None:
    err = ValueError("boom")
    group = BaseExceptionGroup("g", [cancelled(), BaseExceptionGroup("h", [err, KeyError()])])
    assert first_error(group) is err
    plain = RuntimeError()
    assert first_error(plain) is plain


async def body_raises() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        raise KeyError("mine")


async def test_real_nursery_group_unwraps() -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        await body_raises()
    assert isinstance(sole_error(info.value), KeyError)
