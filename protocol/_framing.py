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
to msgspec as bytes without decoding to ``str``. An OpenAI chunk costs one ``find`` per line and
one tuple per event.

Limits are constructor arguments (``max_buffer``): a peer that never sends a line end cannot
grow our memory without bound; the decoder reports it as a protocol error instead.
"""

from __future__ import annotations

SSEEvent = tuple[str, bytes]
"""``(event_name, data)``; the name is ``"message"`` when the stream gave none."""

DEFAULT_MAX_BUFFER = 4 * 1024 * 1024


class FramingError(Exception):
    """The byte stream broke the framing rules (for example a line over the buffer limit)."""


class SSEParser:
    """Incremental SSE parser: ``feed(bytes) -> [events]``; ``close() -> [events]``.

    At ``close()`` the standard drops an event that lacked its terminating blank line; we
    dispatch it instead, as the official SDKs do (several real recordings end that way). A
    dialect tells a clean end from a cut one by its own terminator, not by framing.
    """

    __slots__ = ("_buf", "_data", "_event", "_max", "_skip_lf")

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = ""
        self._skip_lf = False
        self._max = max_buffer

    def feed(self, chunk: bytes) -> list[SSEEvent]:
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
                raise FramingError(f"an SSE line exceeded {self._max} bytes")
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        if len(self._buf) > self._max:
            raise FramingError(f"an SSE line exceeded {self._max} bytes")
        return self._lines(buf[:end].split(b"\n"))

    def close(self) -> list[SSEEvent]:
        """End of body: process a final line that lacked its line end and dispatch an event
        that lacked its blank line."""
        rest, self._buf = self._buf, b""
        return self._lines([rest, b""] if rest else [b""])

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append((self._event or "message", b"\n".join(data)))
                    data.clear()
                self._event = ""
                continue
            if line[:5] == b"data:":
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
                continue
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
                data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        return out


class LineSplitter:
    """Incremental NDJSON framing: ``feed(bytes) -> [lines]``; ``close() -> [last line]``.

    Blank lines are skipped; ``close()`` returns a final line that lacked its ``\\n`` (Ollama
    often omits it).
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
        if len(self._buf) > self._max:
            raise FramingError(f"an NDJSON line exceeded {self._max} bytes")
        return [line for line in buf[:end].split(b"\n") if line.strip()]

    def close(self) -> list[bytes]:
        rest, self._buf = self._buf, b""
        return [rest] if rest.strip() else []
