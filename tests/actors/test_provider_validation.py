"""A `Connection` called directly refuses unsound requests at its door, and a request a
dialect cannot encode ends as ``bad_request`` - the actor never crashes on request data."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock

from protocol._errors import ErrorKind
from protocol._messages import ChatRequest, Completion, Failure
from tests.actors.test_provider import chat_request, config, connect, serving, stream_all


async def test_a_direct_call_refuses_bad_fields_without_reaching_the_actor(
    autojump_clock: MockClock,
) -> None:
    conn, fake = connect(config())
    async with serving(conn):
        for bad in (
            chat_request(max_tokens=-5),
            chat_request(temperature=float("nan")),
            ChatRequest(model="m", messages=[]),
        ):
            result = await conn.chat(bad)
            assert isinstance(result, Failure)
            assert result.kind is ErrorKind.BAD_REQUEST
            events, streamed = await stream_all(conn, bad)
            assert events == []
            assert isinstance(streamed, Failure)
            assert streamed.kind is ErrorKind.BAD_REQUEST
        # An empty model is the connection's default_model here.
        done = await conn.chat(ChatRequest(model="", messages=chat_request().messages))
        assert isinstance(done, Completion)
    assert len(fake.attempts) == 1
    assert conn.incarnation == 1
    assert conn.statistics().mailbox.queued == 0


async def test_a_request_the_dialect_cannot_encode_is_a_bad_request(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, fake = connect(config())
    dialect = type(conn._generation.dialect)

    def broken(self: Any, request: ChatRequest, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Encoding objects of type Widget is unsupported")

    async with serving(conn):
        monkeypatch.setattr(dialect, "chat_request", broken)
        result = await conn.chat(chat_request())
        assert isinstance(result, Failure)
        assert result.kind is ErrorKind.BAD_REQUEST
        assert "openai cannot encode it (TypeError: Encoding objects" in result.message
        monkeypatch.undo()
        assert isinstance(await conn.chat(chat_request()), Completion)
    assert conn.incarnation == 1
    assert len(fake.attempts) == 1
