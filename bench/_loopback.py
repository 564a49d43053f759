"""A minimal, fast loopback HTTP/1.1 server with canned OpenAI-shaped answers, for benchmarks.

Why not `actors.testing.FakeProvider`: it is built to misbehave faithfully (h11 framing, a
watcher task per connection, scripts, attempt logs), so it spends far more CPU per request
than the client we want to measure. On a 2-core machine a heavy server steals the core the
client runs on and changes how reads coalesce. A benchmark server should do as little as
possible, and run in its own process so its CPU is never counted.

Options: asyncio (event-loop timers have millisecond resolution, too coarse to pace stream
chunks ~100 µs apart), a hand-written selector loop (more code), or blocking sockets with one
thread per connection. We take threads: ``time.sleep`` paces chunks with microsecond
resolution, the GIL is released while a thread sleeps or waits on its socket, and parsing is
a few ``bytes`` operations (we only need the header block, ``content-length`` and two facts
about the body).

What it answers, to ``POST <anything>`` with a JSON body:

- ``"stream": true`` absent: a non-streamed ``chat.completion`` body (``content-length``).
- ``"stream": true``: an SSE stream (``transfer-encoding: chunked``) of N content chunks, a
  usage chunk and ``data: [DONE]``, shaped like the 2025 api.openai.com recording (see
  ``bench/decode.py``). N comes from the model name ``chunks-N`` (default 20). Each event is
  written in its own HTTP chunk, ``--gap-us`` microseconds after the previous one (as tokens
  arrive from a real model, each in its own socket read); ``--gap-us 0`` writes the whole
  body at once.

Every response carries the headers api.openai.com sends (``x-request-id``,
``openai-processing-ms``, ``x-ratelimit-*``), so clients pay for parsing what they would parse
in production.

Run: ``python bench/_loopback.py [--gap-us 100]``. It binds 127.0.0.1 on a free port and prints
``PORT <n>`` on its first line of stdout; it stops when its stdin closes (so a parent that dies
never leaves it behind) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import build_stream

_MODEL = re.compile(rb'"model"\s*:\s*"chunks-(\d+)"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_COMMON_HEADERS = (
    b"date: Thu, 14 Aug 2025 02:18:41 GMT\r\n"
    b"openai-organization: user-bench\r\n"
    b"openai-processing-ms: 212\r\n"
    b"openai-version: 2020-10-01\r\n"
    b"x-request-id: req_4d1c9a3f1b0e4a7f9d2c6b8e5a7f3c21\r\n"
    b"x-ratelimit-limit-requests: 10000\r\n"
    b"x-ratelimit-limit-tokens: 30000000\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\n"
    b"x-ratelimit-remaining-tokens: 29999990\r\n"
    b"x-ratelimit-reset-requests: 6ms\r\n"
    b"x-ratelimit-reset-tokens: 0s\r\n"
    b"server: bench-loopback\r\n"
)


def completion_body() -> bytes:
    """A 2025-style non-streamed ``chat.completion`` answer."""
    body = {
        "id": "chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY",
        "object": "chat.completion",
        "created": 1755137921,
        "model": "gpt-5-nano-2025-08-07",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The quick brown fox jumps over the lazy dog.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 11,
            "total_tokens": 23,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class _Answers:
    """Pre-rendered responses: one non-streamed answer, and per chunk count the head and
    the list of HTTP chunks of the stream (rendered on first use, then cached)."""

    def __init__(self) -> None:
        body = completion_body()
        self.plain = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + _COMMON_HEADERS
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            + _COMMON_HEADERS
            + b"transfer-encoding: chunked\r\n\r\n"
        )
        self._streams: dict[int, list[bytes]] = {}
        self._lock = threading.Lock()

    def stream(self, chunks: int) -> list[bytes]:
        with self._lock:
            got = self._streams.get(chunks)
            if got is None:
                events = [e + b"\n\n" for e in build_stream(chunks).split(b"\n\n") if e]
                got = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
                got[-1] += b"0\r\n\r\n"
                self._streams[chunks] = got
            return got


def _serve_connection(sock: socket.socket, answers: _Answers, gap: float) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head = buf[: end + 2].lower()  # every header line ends with CRLF
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            need = end + 4 + length
            while len(buf) < need:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[end + 4 : need], buf[need:]
            if not _STREAM.search(body):
                sock.sendall(answers.plain)
                continue
            found = _MODEL.search(body)
            parts = answers.stream(int(found.group(1)) if found else 20)
            if gap <= 0:
                sock.sendall(answers.stream_head + b"".join(parts))
                continue
            sock.sendall(answers.stream_head)
            for part in parts:
                time.sleep(gap)
                sock.sendall(part)
    except OSError:
        return
    finally:
        sock.close()


def serve(listener: socket.socket, gap: float) -> None:
    """Accept connections on *listener* forever, one thread each."""
    answers = _Answers()
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_connection, args=(sock, answers, gap), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--gap-us", type=float, default=100.0, help="pause before each stream event (µs)"
    )
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port), backlog=256)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    threading.Thread(target=serve, args=(listener, args.gap_us / 1e6), daemon=True).start()
    sys.stdin.read()  # returns at EOF: the parent closed our stdin or died


if __name__ == "__main__":
    main()
