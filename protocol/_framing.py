"""Sans-IO framing of streamed bodies: Server-Sent Events and newline-delimited JSON.

The dialect decoders sit on top of these: framing turns arbitrary byte chunks (split anywhere,
even between a CR and its LF) into whole events; the dialect turns each event's JSON into
typed stream events. Keeping the two apart means the tricky byte-level rules are written and
tested once.

SSE follows the WHATWG "event stream interpretation" rules:

- lines end with CRLF, LF or CR; a CR at the end of a chunk may be half of a CRLF, so we
  remember it and drop an LF that starts the next chunk;
- a line starting with ``:`` is a comment; ``field:value`` strips one space after the colon;
  a line without a colon is a field with an empty value;
- ``data`` lines accumulate, joined by ``\\n``; ``event`` sets the event name; a blank line
  dispatches (nothing is dispatched when no data arrived); ``id`` and ``retry`` are ignored
  (we never reconnect an LLM stream).

The hot path is bytes-only: we split on ``\\n`` after folding CRs, and hand each event's data
to msgspec as bytes without decoding to ``str``. An OpenAI chunk costs a couple of
``startswith`` calls per line and one tuple per event.

Limits are constructor arguments (``max_buffer``): a peer that never sends a line end, or sends
data lines without ever ending the event, cannot grow our memory without bound; the decoder
reports it as a protocol error instead. The limit is checked on whole lines as well as on the
pending partial one, so whether a stream trips it does not depend on how it was split, and the
`FramingError` carries the events completed before the offending line.
"""

from __future__ import annotations

from typing import Any

SSEEvent = tuple[str, bytes]
"""``(event_name, data)``; the name is ``"message"`` when the stream gave none."""

DEFAULT_MAX_BUFFER = 4 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class FramingError(Exception):
    """The byte stream broke the framing rules (a line, or an event's data, over the buffer
    limit).

    ``events`` holds what the failing ``feed`` call completed before the offending line (SSE
    events or NDJSON lines), so a caller that delivers them before reporting the error sees
    the same items however the body was split. The parser must not be fed after this.
    """

    def __init__(self, message: str, events: list[Any] | None = None) -> None:
        super().__init__(message)
        self.events: list[Any] = events if events is not None else []


class SSEParser:
    """Incremental SSE parser: ``feed(bytes) -> [events]``; ``close() -> [events]``.

    At ``close()`` the standard drops an event that lacked its terminating blank line; we
    dispatch it instead, as the official SDKs do (several real recordings end that way). A
    dialect tells a clean end from a cut one by its own terminator, not by framing.

    Limits: a line, or the data of one event, longer than ``max_buffer`` bytes raises
    `FramingError` (carrying the events completed before it). The check does not depend on how
    the body was split: a complete over-long line fails exactly as a growing partial one does.
    A UTF-8 byte order mark at the very start of the stream is skipped, as the standard says.
    """

    __slots__ = ("_buf", "_data", "_event", "_max", "_size", "_skip_lf", "_start")

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._size = 0
        self._event = ""
        self._skip_lf = False
        self._start = True
        self._max = max_buffer

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._start:
            # Until three bytes have arrived we cannot tell a BOM from data.
            head = self._buf + chunk
            if len(head) < 3 and _BOM.startswith(head):
                self._buf = head
                return []
            self._start = False
            self._buf = b""
            chunk = head[3:] if head.startswith(_BOM) else head
            if not chunk:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self._max:
                raise FramingError(self._too_long())
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        events = self._lines(buf[:end].split(b"\n"))
        if len(self._buf) > self._max:
            raise FramingError(self._too_long(), events)
        return events

    def close(self) -> list[SSEEvent]:
        """End of body: process a final line that lacked its line end and dispatch an event
        that lacked its blank line."""
        rest, self._buf = self._buf, b""
        self._start = False
        return self._lines([rest, b""] if rest else [b""])

    def _too_long(self) -> str:
        return f"an SSE line or event exceeded {self._max} bytes"

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        size = self._size
        limit = self._max
        for line in lines:
            if not line:
                if data:
                    out.append((self._event or "message", b"\n".join(data)))
                    data.clear()
                size = 0
                self._event = ""
                continue
            if line.startswith(b"data:"):
                # The whole line counts, so a long line fails whether it arrived whole or not.
                size += len(line)
                if size > limit:
                    raise FramingError(self._too_long(), out)
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                continue
            if len(line) > limit:
                raise FramingError(self._too_long(), out)
            colon = line.find(b":")
            if colon == 0:
                continue  # comment
            if colon < 0:
                name, value = line, b""
            else:
                name, value = line[:colon], line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"data":
                size += len(line)
                data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        self._size = size
        return out


class LineSplitter:
    """Incremental NDJSON framing: ``feed(bytes) -> [lines]``; ``close() -> [last line]``.

    Blank lines are skipped; ``close()`` returns a final line that lacked its ``\\n`` (Ollama
    often omits it). A line longer than ``max_buffer`` raises `FramingError` (carrying the lines
    completed before it), whether it arrived whole or in pieces.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._buf = b""
        self._max = max_buffer

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self._max:
                raise FramingError(f"an NDJSON line exceeded {self._max} bytes")
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        lines = buf[:end].split(b"\n")
        if end > self._max:  # only then can a complete line be too long
            for i, line in enumerate(lines):
                if len(line) > self._max:
                    raise FramingError(
                        f"an NDJSON line exceeded {self._max} bytes",
                        [x for x in lines[:i] if x.strip()],
                    )
        out = [line for line in lines if line.strip()]
        if len(self._buf) > self._max:
            raise FramingError(f"an NDJSON line exceeded {self._max} bytes", out)
        return out

    def close(self) -> list[bytes]:
        rest, self._buf = self._buf, b""
        return [rest] if rest.strip() else []
