"""Wire frames of the gateway: every frame round-trips through JSON and MessagePack
(Hypothesis), bad input raises `FrameError` (with the id when it can be recovered), and old and
new peers understand each other (unknown fields ignored, missing defaulted fields filled in)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._errors import ErrorKind
from protocol._frames import (
    PROTOCOL_VERSION,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Accepted,
    Batch,
    BatchItem,
    Cancel,
    ChatCall,
    ClientFrame,
    ConnectionStatus,
    Done,
    EmbedCall,
    EmbedDone,
    EventFrame,
    FailureFrame,
    FrameError,
    Goodbye,
    Hello,
    Ping,
    Pong,
    ServerFrame,
    StatusCall,
    StatusReply,
    Welcome,
    batch_message,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
    encoding_for,
    frame_bytes,
    frame_failure,
    message_of,
)
from protocol._messages import ChatRequest, Completion, Message, TextDelta
from tests.protocol.test_messages import (
    chat_requests,
    completions,
    embed_requests,
    embeddings,
    failures,
    floats,
    stream_events,
)

ids = st.text(max_size=12)
small = st.integers(min_value=0, max_value=2**31)

client_frames: st.SearchStrategy[ClientFrame] = st.one_of(
    st.builds(
        Hello, version=small, token=st.none() | ids, client=ids, features=st.lists(ids, max_size=2)
    ),
    st.builds(ChatCall, id=ids, request=chat_requests, stream=st.booleans()),
    st.builds(EmbedCall, id=ids, request=embed_requests),
    st.builds(Cancel, id=ids),
    st.builds(Ping, nonce=ids),
    st.builds(StatusCall, id=ids),
)

connection_statuses = st.builds(
    ConnectionStatus,
    name=ids,
    provider=ids,
    running=st.booleans(),
    breaker=ids,
    queued=small,
    in_flight=small,
    requests=small,
    completions=small,
    failures=small,
    input_tokens=small,
    output_tokens=small,
    cost=st.none() | floats,
    incarnation=small,
)

batch_items: st.SearchStrategy[BatchItem] = st.one_of(
    st.builds(Welcome, version=small, server=ids, max_frame_bytes=small, max_concurrent=small),
    st.builds(Accepted, id=ids),
    st.builds(EventFrame, id=ids, event=stream_events),
    st.builds(Done, id=ids, result=completions),
    st.builds(EmbedDone, id=ids, result=embeddings),
    st.builds(FailureFrame, id=ids, failure=failures),
    st.builds(Pong, nonce=ids),
    st.builds(
        StatusReply, id=ids, status=ids, connections=st.lists(connection_statuses, max_size=2)
    ),
    st.builds(Goodbye, reason=ids, drain_s=floats),
)
server_frames: st.SearchStrategy[ServerFrame] = batch_items | st.builds(
    Batch, frames=st.lists(batch_items, max_size=4)
)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=100, deadline=None)
@given(client_frames, st.sampled_from(["json", "msgpack"]))
def test_client_frames_round_trip(frame: ClientFrame, encoding: Any) -> None:
    message = encode_frame(frame, encoding)
    assert isinstance(message, str if encoding == "json" else bytes)
    assert decode_client_frame(message) == frame


@settings(max_examples=150, deadline=None)
@given(server_frames, st.sampled_from(["json", "msgpack"]))
def test_server_frames_round_trip(frame: ServerFrame, encoding: Any) -> None:
    message = encode_frame(frame, encoding)
    assert isinstance(message, str if encoding == "json" else bytes)
    assert decode_server_frame(message) == frame


def test_every_frame_type_is_covered_by_the_strategies() -> None:
    """The unions and the strategies above list the same frame types (a new frame type
    must get a round-trip strategy)."""
    assert set(ClientFrame.__args__) == {Hello, ChatCall, EmbedCall, Cancel, Ping, StatusCall}
    assert set(ServerFrame.__args__) == {
        Batch,
        Welcome,
        Accepted,
        EventFrame,
        Done,
        EmbedDone,
        FailureFrame,
        Pong,
        StatusReply,
        Goodbye,
    }


@settings(max_examples=100, deadline=None)
@given(st.lists(batch_items, min_size=1, max_size=5), st.sampled_from(["json", "msgpack"]))
def test_frames_encoded_apart_make_one_batch_or_one_message_each(
    frames: list[BatchItem], encoding: Any
) -> None:
    """The gateway encodes each frame once (`frame_bytes`) and sends it alone
    (`message_of`, what `encode_frame` gives) or with others in one `Batch`
    (`batch_message`), which decodes to the same frames in the same order."""
    encoded = [frame_bytes(frame, encoding) for frame in frames]
    for frame, data in zip(frames, encoded, strict=True):
        assert message_of(data, encoding) == encode_frame(frame, encoding)
    message = batch_message(encoded, encoding)
    assert isinstance(message, str if encoding == "json" else bytes)
    assert decode_server_frame(message) == Batch(frames=frames)


def test_json_shape_is_the_documented_one() -> None:
    """The wire shape docs/protocol.md shows: a ``type`` tag, the id, the message inline."""
    request = ChatRequest(
        model="fake-model", messages=[Message(role="user", content="hi")], request_id="r1"
    )
    wire = msgspec.json.decode(encode_frame(ChatCall(id="r1", request=request)))
    assert wire["type"] == "chat"
    assert wire["id"] == "r1"
    assert wire["stream"] is True
    assert wire["request"]["messages"] == [{"role": "user", "content": "hi"}]
    event = msgspec.json.decode(encode_frame(EventFrame(id="r1", event=TextDelta(text="Hel"))))
    assert event == {"type": "event", "id": "r1", "event": {"type": "text_delta", "text": "Hel"}}
    failure = msgspec.json.decode(encode_frame(frame_failure(ErrorKind.QUEUE_FULL, "x", id="a")))
    assert failure["type"] == "failure"
    assert failure["failure"]["kind"] == "queue_full"
    assert failure["failure"]["request_id"] == "a"
    assert msgspec.json.decode(encode_frame(Hello()))["version"] == PROTOCOL_VERSION == 1
    batch = msgspec.json.decode(
        batch_message([frame_bytes(Accepted(id="r1")), frame_bytes(Pong(nonce="7"))])
    )
    assert batch == {
        "type": "batch",
        "frames": [{"type": "accepted", "id": "r1"}, {"type": "pong", "nonce": "7"}],
    }


def test_text_is_json_and_binary_is_msgpack_whatever_was_negotiated() -> None:
    ping = Ping(nonce="n")
    assert decode_client_frame('{"type":"ping","nonce":"n"}') == ping
    assert decode_client_frame(msgspec.msgpack.encode({"type": "ping", "nonce": "n"})) == ping


def test_encoding_for_subprotocols() -> None:
    assert encoding_for(SUBPROTOCOL_MSGPACK) == "msgpack"
    assert encoding_for(SUBPROTOCOL_JSON) == "json"
    assert encoding_for(None) == "json"
    assert encoding_for("something.else") == "json"


# --------------------------------------------------------------------------- bad frames


@pytest.mark.parametrize(
    ("message", "expected_id", "words"),
    [
        ("not json at all", "", "undecodable"),
        ('{"type": "chat", "id": "r7"', "", "undecodable"),  # truncated
        (b"\xc1", "", "undecodable"),  # a msgpack byte that is never valid
        ("[1, 2, 3]", "", "invalid"),
        ('{"id": "r1"}', "r1", "invalid"),  # no type tag
        ('{"type": "teleport", "id": "r2"}', "r2", "invalid"),  # unknown frame type
        ('{"type": "chat", "id": "r3"}', "r3", "invalid"),  # no request
        ('{"type": "chat", "id": "r4", "request": {"model": 5}}', "r4", "invalid"),
        ('{"type": "cancel"}', "", "invalid"),  # no id to recover
        ('{"type": "cancel", "id": 12}', "", "invalid"),  # an id that is not a string
        (msgspec.msgpack.encode({"type": "embed", "id": "m1"}), "m1", "invalid"),
        ('{"type": "welcome"}', "", "invalid"),  # a server frame sent by a client
    ],
)
def test_bad_client_frames_raise_frame_error(
    message: str | bytes, expected_id: str, words: str
) -> None:
    with pytest.raises(FrameError) as info:
        decode_client_frame(message)
    assert info.value.id == expected_id
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_recovered_ids_are_bounded() -> None:
    long_id = "x" * 10_000
    with pytest.raises(FrameError) as info:
        decode_client_frame(msgspec.json.encode({"type": "chat", "id": long_id}).decode())
    assert info.value.id == long_id[:200]


def test_bad_server_frames_raise_frame_error() -> None:
    with pytest.raises(FrameError) as info:
        decode_server_frame('{"type": "done", "id": "q", "result": {"text": 3}}')
    assert info.value.id == "q"
    with pytest.raises(FrameError):
        decode_server_frame('{"type": "chat", "id": "q"}')  # a client frame
    with pytest.raises(FrameError):
        decode_server_frame(b"\x92\x01")  # msgpack, but an array


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_any_garbage_gives_frame_error_or_a_frame(message: bytes | str) -> None:
    """Decoding never crashes with anything but `FrameError`."""
    for decode in (decode_client_frame, decode_server_frame):
        recovered: object = None
        try:
            decode(message)
        except FrameError as exc:
            recovered = exc.id
        assert recovered is None or isinstance(recovered, str)


# --------------------------------------------------------------------------- schema evolution


def test_a_newer_peer_s_unknown_fields_are_ignored() -> None:
    message = (
        '{"type": "chat", "id": "r1", "priority": "high", "stream": false,'
        ' "request": {"model": "m", "messages": [{"role": "user", "content": "hi",'
        ' "name": "bob"}], "request_id": "r1", "reasoning_effort": "low"}}'
    )
    frame = decode_client_frame(message)
    assert isinstance(frame, ChatCall)
    assert frame.stream is False
    assert frame.request.messages[0].text() == "hi"
    done = decode_server_frame(
        '{"type": "done", "id": "r1", "trace": [1], "result": {"text": "ok", "new_metric": 2}}'
    )
    assert done == Done(id="r1", result=Completion(text="ok"))
    welcome = decode_server_frame('{"type": "welcome", "version": 1, "features": ["resume"]}')
    assert welcome == Welcome()


def test_an_older_peer_s_missing_defaulted_fields_are_filled_in() -> None:
    frame = decode_client_frame(
        '{"type": "chat", "id": "r1", "request": {"model": "m", "messages": []}}'
    )
    assert isinstance(frame, ChatCall)
    assert frame.stream is True  # the default
    assert frame.request.max_tokens is None
    assert decode_client_frame('{"type": "hello"}') == Hello()
    assert Hello().features == []  # an old client offers no features: no batches
    assert decode_client_frame('{"type": "ping"}') == Ping()
    assert decode_server_frame('{"type": "goodbye"}') == Goodbye()
    assert decode_server_frame('{"type": "status_reply", "id": "s"}') == StatusReply(id="s")
    failure = decode_server_frame(
        '{"type": "failure", "id": "r", "failure": {"kind": "timeout", "message": "slow"}}'
    )
    assert isinstance(failure, FailureFrame)
    assert failure.failure.kind is ErrorKind.TIMEOUT
    assert failure.failure.retryable is False  # a default, not re-derived from the table
    assert failure.failure.usage is None


def test_frame_failure_carries_the_id_and_the_table_s_retryability() -> None:
    frame = frame_failure(ErrorKind.CONNECTION, "gone", id="r9")
    assert frame.id == "r9"
    assert frame.failure.request_id == "r9"
    assert frame.failure.retryable is True
    assert frame_failure(ErrorKind.BAD_REQUEST, "no").failure.retryable is False
