"""Wire frames of the WebSocket gateway: one tagged union per direction.

Why frames of our own messages rather than, say, the OpenAI SSE format over WebSocket: a
client of the gateway should see exactly what an in-process caller sees (typed stream events,
one terminal `Completion` or `Failure`), for every provider, and should be able to run many
requests over one socket. So a frame is a thin envelope (``type``, a client-chosen ``id``)
around the same msgspec messages `protocol` already defines.

Encoding: JSON text messages by default; MessagePack binary messages when the client offers
the ``switchboard.v1.msgpack`` WebSocket subprotocol (``switchboard.v1.json`` or none means
JSON). The version is in the subprotocol and again in `Hello`/`Welcome`. Schema evolution:
new fields always get defaults, and unknown fields are ignored, so old and new peers can talk.

Optional features are offered by the client in `Hello.features`; the server uses a feature
only with a client that offered it, so an old client (which offers none) sees only the frames
it knows. The one feature so far, ``batch``, lets the server send several frames in one
message (`Batch`): a stream of small events then costs one WebSocket message, one socket
write and one decode per batch instead of per event, on both sides.

    client → server: hello, chat, embed, cancel, ping, status
    server → client: welcome, accepted, event, done, embeddings, failure, pong, status_reply,
                     goodbye; batch (several of these, to clients that offer ``batch``)

See ``docs/protocol.md`` for the complete protocol.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from ._errors import ErrorKind
from ._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    StreamEvent,
)

PROTOCOL_VERSION = 1
SUBPROTOCOL_JSON = "switchboard.v1.json"
SUBPROTOCOL_MSGPACK = "switchboard.v1.msgpack"
SUBPROTOCOLS = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)

Encoding = Literal["json", "msgpack"]

# Close codes (RFC 6455 private range 4000-4999, plus standard ones we use).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401
CLOSE_HANDSHAKE_TIMEOUT = 4408
CLOSE_SLOW_CONSUMER = 4429
CLOSE_UNSUPPORTED_VERSION = 4426

FEATURE_BATCH = "batch"
"""`Hello.features`: the client accepts `Batch` messages."""


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of all frames."""


# --------------------------------------------------------------------------- client → server


class Hello(_Frame, frozen=True, kw_only=True, tag="hello"):
    """First frame from the client. ``token`` authenticates clients that cannot set an
    ``Authorization`` header (browsers); it is ignored when the header already did."""

    version: int = PROTOCOL_VERSION
    token: str | None = None
    client: str = ""
    features: list[str] = []
    """Optional protocol features the client understands (`FEATURE_BATCH`); unknown ones
    are ignored by the server."""


class ChatCall(_Frame, frozen=True, kw_only=True, tag="chat"):
    """Run a chat request. ``id`` is chosen by the client, unique among its open requests.
    With ``stream`` the server sends `EventFrame`s before the terminal frame."""

    id: str
    request: ChatRequest
    stream: bool = True


class EmbedCall(_Frame, frozen=True, kw_only=True, tag="embed"):
    """Compute embeddings."""

    id: str
    request: EmbedRequest


class Cancel(_Frame, frozen=True, kw_only=True, tag="cancel"):
    """Cancel request ``id``; the server answers with a ``cancelled`` failure for it."""

    id: str


class Ping(_Frame, frozen=True, kw_only=True, tag="ping"):
    """Application-level ping; the server answers `Pong` with the same ``nonce``."""

    nonce: str = ""


class StatusCall(_Frame, frozen=True, kw_only=True, tag="status"):
    """Ask for the runtime's connection status."""

    id: str


ClientFrame = Hello | ChatCall | EmbedCall | Cancel | Ping | StatusCall


# --------------------------------------------------------------------------- server → client


class Welcome(_Frame, frozen=True, kw_only=True, tag="welcome"):
    """The server accepted the connection (after authentication)."""

    version: int = PROTOCOL_VERSION
    server: str = "trio-switchboard"
    max_frame_bytes: int = 1_048_576
    max_concurrent: int = 64


class Accepted(_Frame, frozen=True, kw_only=True, tag="accepted"):
    """Request ``id`` was accepted and is running."""

    id: str


class EventFrame(_Frame, frozen=True, kw_only=True, tag="event"):
    """One stream event of request ``id``."""

    id: str
    event: StreamEvent


class Done(_Frame, frozen=True, kw_only=True, tag="done"):
    """Chat request ``id`` ended with its completion. Terminal for that id."""

    id: str
    result: Completion


class EmbedDone(_Frame, frozen=True, kw_only=True, tag="embeddings"):
    """Embeddings request ``id`` ended with its vectors. Terminal for that id."""

    id: str
    result: Embeddings


class FailureFrame(_Frame, frozen=True, kw_only=True, tag="failure"):
    """Request ``id`` ended with a typed failure. Terminal for that id. ``id`` is empty when
    the frame that failed could not be attributed to a request (it was not decodable)."""

    id: str
    failure: Failure


class Pong(_Frame, frozen=True, kw_only=True, tag="pong"):
    nonce: str = ""


class ConnectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One connection as shown by ``switchboard status``."""

    name: str
    provider: str
    running: bool = True
    breaker: str = "closed"
    queued: int = 0
    in_flight: int = 0
    requests: int = 0
    completions: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    incarnation: int = 1


class StatusReply(_Frame, frozen=True, kw_only=True, tag="status_reply"):
    """The answer to `StatusCall`."""

    id: str
    status: str = "ok"
    connections: list[ConnectionStatus] = []


class Goodbye(_Frame, frozen=True, kw_only=True, tag="goodbye"):
    """The server is shutting down: no new requests; running ones finish (up to
    ``drain_s`` seconds)."""

    reason: str = "shutting down"
    drain_s: float = 0.0


BatchItem = (
    Welcome | Accepted | EventFrame | Done | EmbedDone | FailureFrame | Pong | StatusReply | Goodbye
)
"""Every server frame but `Batch` (batches do not nest)."""


class Batch(_Frame, frozen=True, kw_only=True, tag="batch"):
    """Several server frames in one message, in the order they would have been sent one by
    one. Sent only to a client whose hello offered `FEATURE_BATCH`."""

    frames: list[BatchItem]


ServerFrame = BatchItem | Batch


class _RawBatch(_Frame, frozen=True, kw_only=True, tag="batch"):
    """`Batch` built from frames encoded already (`frame_bytes`), for `batch_message`."""

    frames: list[msgspec.Raw]


# --------------------------------------------------------------------------- codecs

_F = TypeVar("_F")

_client_json = msgspec.json.Decoder(ClientFrame)
_client_msgpack = msgspec.msgpack.Decoder(ClientFrame)
_server_json = msgspec.json.Decoder(ServerFrame)
_server_msgpack = msgspec.msgpack.Decoder(ServerFrame)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


class FrameError(ValueError):
    """A frame could not be decoded. ``id`` is the request id if it could be recovered."""

    def __init__(self, message: str, *, id: str = "") -> None:
        super().__init__(message)
        self.id = id


def encoding_for(subprotocol: str | None) -> Encoding:
    """The encoding a negotiated subprotocol implies."""
    return "msgpack" if subprotocol == SUBPROTOCOL_MSGPACK else "json"


def encode_frame(
    frame: ClientFrame | ServerFrame | _RawBatch, encoding: Encoding = "json"
) -> str | bytes:
    """A frame as a WebSocket message: text for JSON, binary for MessagePack."""
    if encoding == "msgpack":
        return _msgpack_encoder.encode(frame)
    return _json_encoder.encode(frame).decode()


def frame_bytes(frame: ServerFrame, encoding: Encoding = "json") -> bytes:
    """A frame encoded as bytes (UTF-8 JSON or MessagePack), for `message_of` or
    `batch_message`."""
    if encoding == "msgpack":
        return _msgpack_encoder.encode(frame)
    return _json_encoder.encode(frame)


def message_of(encoded: bytes, encoding: Encoding = "json") -> str | bytes:
    """The WebSocket message of one frame from `frame_bytes` (text for JSON)."""
    return encoded.decode() if encoding == "json" else encoded


def batch_message(encoded: list[bytes], encoding: Encoding = "json") -> str | bytes:
    """One `Batch` message holding the frames of *encoded* (from `frame_bytes`), in order."""
    return encode_frame(_RawBatch(frames=[msgspec.Raw(e) for e in encoded]), encoding)


def _recover_id(message: str | bytes) -> str:
    try:
        raw = (
            msgspec.json.decode(message)
            if isinstance(message, str)
            else msgspec.msgpack.decode(message)
        )
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError):
        return ""
    if isinstance(raw, dict):
        value = raw.get("id")
        if isinstance(value, str):
            return value[:200]
    return ""


def _decode(
    message: str | bytes,
    json_dec: msgspec.json.Decoder[_F],
    mp_dec: msgspec.msgpack.Decoder[_F],
) -> _F:
    try:
        if isinstance(message, str):
            return json_dec.decode(message)
        return mp_dec.decode(message)
    except msgspec.ValidationError as exc:
        raise FrameError(f"invalid frame: {exc}", id=_recover_id(message)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise FrameError(f"undecodable frame: {exc}", id="") from None


def decode_client_frame(message: str | bytes) -> ClientFrame:
    """A client frame from a WebSocket message (text: JSON, binary: MessagePack). Raises
    `FrameError` (with the request id when it can be recovered) for anything else."""
    return _decode(message, _client_json, _client_msgpack)


def decode_server_frame(message: str | bytes) -> ServerFrame:
    """A server frame from a WebSocket message. Raises `FrameError`."""
    return _decode(message, _server_json, _server_msgpack)


def frame_failure(kind: ErrorKind, message: str, *, id: str = "") -> FailureFrame:
    """A `FailureFrame` for a problem the gateway itself found."""
    return FailureFrame(id=id, failure=Failure.of(kind, message, request_id=id))
