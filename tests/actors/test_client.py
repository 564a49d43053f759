"""The Python client's reader path, by its structure (never by time: `bench/gateway.py`
measures the cost), without a socket: the reader hands an item to its request without a
scheduling round trip while the request's channel has room and waits when it is full (the
backpressure the gateway relies on), and a stream's consumer takes buffered events the same
way and waits only when nothing is buffered. Over sockets: ``tests/integration``.
"""

from __future__ import annotations

from typing import cast

import trio
import trio_websocket as tw
from trio.testing import MockClock, assert_checkpoints, assert_no_checkpoints

from actors._client import Client, ClientStream
from protocol._errors import ErrorKind
from protocol._frames import Done, EventFrame, Welcome
from protocol._messages import Completion, Failure, TextDelta


def new_client() -> Client:
    return Client(cast(tw.WebSocketConnection, object()), "json", Welcome())


def lost() -> Failure:
    return Failure.of(ErrorKind.CONNECTION, "lost")


async def test_the_reader_hands_items_over_without_a_checkpoint_while_there_is_room(
    autojump_clock: MockClock,
) -> None:
    client = new_client()
    receive = client._open("r1", buffer=4)
    with assert_no_checkpoints():
        for i in range(4):
            await client._dispatch(EventFrame(id="r1", event=TextDelta(text=str(i))))
    with assert_checkpoints(), trio.move_on_after(1) as waited:
        await client._dispatch(EventFrame(id="r1", event=TextDelta(text="4")))
    assert waited.cancelled_caught  # full: the reader waits for the consumer
    assert [receive.receive_nowait() for _ in range(4)] == [
        TextDelta(text=str(i)) for i in range(4)
    ]
    with assert_no_checkpoints():
        await client._dispatch(Done(id="r1", result=Completion(text="0123")))
    assert receive.receive_nowait() == Completion(text="0123")
    assert "r1" not in client._pending  # the terminal item ends the request


async def test_a_stream_takes_buffered_events_without_a_checkpoint(
    autojump_clock: MockClock,
) -> None:
    send, receive = trio.open_memory_channel[TextDelta | Completion](8)
    stream = ClientStream(receive, lost)
    for i in range(3):
        send.send_nowait(TextDelta(text=str(i)))
    with assert_no_checkpoints():
        assert [await stream.__anext__() for _ in range(3)] == [
            TextDelta(text=str(i)) for i in range(3)
        ]
    with assert_checkpoints(), trio.move_on_after(1) as waited:
        await stream.__anext__()
    assert waited.cancelled_caught  # nothing buffered: it waits
    send.send_nowait(Completion(text="012"))
    assert [event async for event in stream] == []
    assert stream.result == Completion(text="012")
