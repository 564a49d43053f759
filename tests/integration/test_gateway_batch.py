"""The ``batch`` feature over real loopback sockets: a client that offers it in its hello gets
the frames ready for its socket in `Batch` messages - the same frames, in the same order,
exactly one terminal frame per id - and a client that does not (every client written before
the feature) gets one frame per message. The Python client offers it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio_websocket as tw

from actors._client import Client
from actors.testing import FakeTransport
from protocol._frames import (
    FEATURE_BATCH,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Accepted,
    Batch,
    BatchItem,
    ChatCall,
    Done,
    EventFrame,
    Hello,
    Welcome,
    decode_server_frame,
    encode_frame,
)
from protocol._messages import Completion, TextDelta
from tests.integration.test_gateway import LIMIT, TOKEN, chat, serving, text_of

STREAMS = 10
TOKENS = 60


async def run_streams(
    port: int, *, features: list[str], subprotocol: str
) -> tuple[list[Any], dict[str, list[BatchItem]]]:
    """*STREAMS* concurrent streams on one raw socket: every message received (decoded), and
    the frames of each id in the order received (batches unpacked)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    messages: list[Any] = []
    by_id: dict[str, list[BatchItem]] = {str(i): [] for i in range(STREAMS)}
    try:
        async with trio.open_nursery() as nursery:
            ws = await tw.wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                subprotocols=[subprotocol],
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
            )
            encoding: Any = "msgpack" if subprotocol == SUBPROTOCOL_MSGPACK else "json"
            await ws.send_message(encode_frame(Hello(features=features), encoding))
            assert isinstance(decode_server_frame(await ws.get_message()), Welcome)
            for i in range(STREAMS):
                call = ChatCall(id=str(i), request=chat(f"prompt {i}"))
                await ws.send_message(encode_frame(call, encoding))
            ended = 0
            while ended < STREAMS:
                message = decode_server_frame(await ws.get_message())
                messages.append(message)
                for frame in message.frames if isinstance(message, Batch) else [message]:
                    assert not isinstance(frame, Welcome)
                    assert hasattr(frame, "id")
                    by_id[frame.id].append(frame)
                    ended += isinstance(frame, Done)
            await ws.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()
    return messages, by_id


@pytest.mark.parametrize("subprotocol", [SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK])
async def test_a_client_that_offers_batch_gets_the_same_frames_in_batches(
    subprotocol: str,
) -> None:
    with trio.fail_after(LIMIT):
        async with serving(FakeTransport(seed=1, answer_tokens=TOKENS)) as s:
            port = s.gateway.port or 0
            messages, by_id = await run_streams(
                port, features=[FEATURE_BATCH], subprotocol=subprotocol
            )
            for i in range(STREAMS):
                reference = await s.runtime.chat(chat(f"prompt {i}"))
                frames = by_id[str(i)]
                # accepted → events → exactly one terminal frame, the events in order
                assert frames[0] == Accepted(id=str(i))
                assert isinstance(frames[-1], Done)
                events = [f.event for f in frames[1:-1] if isinstance(f, EventFrame)]
                assert len(events) == len(frames) - 2
                assert text_of(events) == frames[-1].result.text == reference.text
    batches = [m for m in messages if isinstance(m, Batch)]
    assert batches  # under load, the frames ready together went together
    assert sum(len(b.frames) for b in batches) > len(batches)
    assert all(len(b.frames) >= 2 for b in batches)  # a frame ready alone goes as itself


async def test_a_client_that_does_not_offer_it_gets_one_frame_per_message() -> None:
    with trio.fail_after(LIMIT):
        async with serving(FakeTransport(seed=1, answer_tokens=TOKENS)) as s:
            port = s.gateway.port or 0
            messages, by_id = await run_streams(port, features=[], subprotocol=SUBPROTOCOL_JSON)
    assert not any(isinstance(m, Batch) for m in messages)
    assert sum(len(frames) for frames in by_id.values()) == len(messages)
    assert all(isinstance(frames[-1], Done) for frames in by_id.values())


async def test_the_python_client_offers_batch_and_reads_batches() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving(FakeTransport(seed=1, answer_tokens=TOKENS)) as s,
            Client.connect(s.url, token=TOKEN) as client,
        ):
            texts: dict[int, str] = {}

            async def one(i: int) -> None:
                async with client.stream(chat(f"prompt {i}")) as stream:
                    events = [event async for event in stream]
                assert isinstance(stream.result, Completion)
                assert text_of(events) == stream.result.text
                assert sum(isinstance(e, TextDelta) for e in events) == TOKENS
                texts[i] = stream.result.text

            async with trio.open_nursery() as nursery:
                for i in range(STREAMS):
                    nursery.start_soon(one, i)
            assert [session.batching for session in s.gateway._sessions] == [True]
            for i in range(STREAMS):
                assert texts[i] == (await s.runtime.chat(chat(f"prompt {i}"))).text
