"""SSE and NDJSON framing: the WHATWG event-stream rules, limits, and any-split invariance."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._framing import FramingError, LineSplitter, SSEEvent, SSEParser


def sse_all(body: bytes, **kw: int) -> list[SSEEvent]:
    parser = SSEParser(**kw)
    return parser.feed(body) + parser.close()


def sse_split(body: bytes, cuts: list[int], **kw: int) -> list[SSEEvent]:
    parser = SSEParser(**kw)
    out: list[SSEEvent] = []
    at = 0
    for cut in sorted(set(cuts)):
        out += parser.feed(body[at:cut])
        at = cut
    out += parser.feed(body[at:])
    return out + parser.close()


# --------------------------------------------------------------------------- line endings


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol: bytes) -> None:
    body = b"data: a" + eol + eol + b"data: b" + eol + eol
    assert sse_all(body) == [("message", b"a"), ("message", b"b")]


def test_mixed_line_endings_in_one_stream() -> None:
    body = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\n"
    assert sse_all(body) == [
        ("message", b"a"),
        ("message", b"b"),
        ("message", b"c"),
        ("message", b"d"),
    ]


def test_cr_at_end_of_chunk_and_lf_at_start_of_next_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # The LF completes the CRLF: it is not a second (blank) line, so nothing is dispatched.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r") == [("message", b"a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [("message", b"b")]


def test_cr_then_cr_is_two_line_ends() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\rdata: b\n\n") == [("message", b"a"), ("message", b"b")]


def test_lf_after_cr_is_dropped_only_once() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\r")
    # "\n\n": the first LF completes the CRLF, the second is a blank line.
    assert parser.feed(b"\n\n") == [("message", b"a")]


# --------------------------------------------------------------------------- fields


def test_comments_are_ignored() -> None:
    body = b": keep-alive\n: OPENROUTER PROCESSING\ndata: x\n:trailing\n\n"
    assert sse_all(body) == [("message", b"x")]


def test_multi_line_data_joined_by_newline() -> None:
    assert sse_all(b"data: one\ndata: two\ndata:three\n\n") == [("message", b"one\ntwo\nthree")]


def test_event_names() -> None:
    body = b"event: ping\ndata: {}\n\nevent:error\ndata: boom\n\ndata: plain\n\n"
    assert sse_all(body) == [("ping", b"{}"), ("error", b"boom"), ("message", b"plain")]


def test_event_name_resets_after_dispatch_and_after_blank_line_without_data() -> None:
    body = b"event: a\n\ndata: x\n\n"
    assert sse_all(body) == [("message", b"x")]


def test_field_without_colon() -> None:
    # "data" alone is a data field with an empty value: the event's data is "".
    assert sse_all(b"data\n\n") == [("message", b"")]
    # An unknown field without colon is ignored.
    assert sse_all(b"foo\ndata: x\n\n") == [("message", b"x")]
    # "event" alone sets an empty event name, i.e. the default.
    assert sse_all(b"event\ndata: x\n\n") == [("message", b"x")]


def test_only_one_leading_space_is_stripped_and_trailing_spaces_are_kept() -> None:
    assert sse_all(b"data:  two spaces  \n\n") == [("message", b" two spaces  ")]
    assert sse_all(b"data:none\n\n") == [("message", b"none")]
    assert sse_all(b"event:  x\ndata: y\n\n") == [(" x", b"y")]


def test_id_and_retry_are_ignored() -> None:
    assert sse_all(b"id: 7\nretry: 1000\ndata: x\n\n") == [("message", b"x")]


def test_blank_line_dispatches_and_no_dispatch_without_data() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [("message", b"x")]
    assert parser.feed(b"\n\n\n: comment\n\nevent: e\n\n") == []


def test_empty_data_value_is_dispatched() -> None:
    assert sse_all(b"data:\n\n") == [("message", b"")]


def test_close_flushes_a_final_event_lacking_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") == [("message", b"a")]
    assert parser.close() == [("message", b"b")]


def test_close_flushes_a_final_line_lacking_its_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a") == []
    assert parser.close() == [("message", b"a")]


def test_close_with_nothing_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n") == [("message", b"a")]
    assert parser.close() == []


def test_empty_feed() -> None:
    assert SSEParser().feed(b"") == []


def test_leading_byte_order_mark_is_skipped_even_when_split() -> None:
    body = b"\xef\xbb\xbfdata: a\n\n"
    assert sse_all(body) == [("message", b"a")]
    for cut in range(1, 5):
        assert sse_split(body, [cut]) == [("message", b"a")]
    # Only at the very start.
    assert sse_all(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [("message", b"a")]


def test_non_utf8_event_name_does_not_raise() -> None:
    assert sse_all(b"event: \xff\xfe\ndata: x\n\n") == [("\ufffd\ufffd", b"x")]


# --------------------------------------------------------------------------- limits


def test_partial_line_over_max_buffer_raises() -> None:
    parser = SSEParser(max_buffer=16)
    assert parser.feed(b"data: 0123456789") == []
    with pytest.raises(FramingError, match="exceeded 16 bytes"):
        parser.feed(b"abcdef")


def test_complete_line_over_max_buffer_raises_with_the_events_before_it() -> None:
    parser = SSEParser(max_buffer=16)
    with pytest.raises(FramingError) as info:
        parser.feed(b"data: ok\n\ndata: 0123456789abcdef\n\n")
    assert info.value.events == [("message", b"ok")]


def test_long_comment_line_also_counts() -> None:
    with pytest.raises(FramingError):
        SSEParser(max_buffer=16).feed(b": " + b"x" * 40 + b"\n")


def test_event_data_over_max_buffer_raises() -> None:
    parser = SSEParser(max_buffer=32)
    with pytest.raises(FramingError):
        parser.feed(b"data: 0123456789\n" * 3)


def test_limit_counts_each_event_separately() -> None:
    parser = SSEParser(max_buffer=32)
    events = parser.feed(b"data: 0123456789\n\n" * 10)
    assert len(events) == 10


def test_pending_partial_over_limit_after_complete_events_carries_them() -> None:
    parser = SSEParser(max_buffer=16)
    with pytest.raises(FramingError) as info:
        parser.feed(b"data: a\n\ndata: 0123456789abcdefgh")
    assert info.value.events == [("message", b"a")]


def test_framing_error_events_default_empty() -> None:
    assert FramingError("x").events == []


# --------------------------------------------------------------------------- LineSplitter


def test_line_splitter_basic() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\n\n  \n{") == [b'{"b":2}']
    assert splitter.close() == [b"{"]


def test_line_splitter_skips_blank_lines_and_close_returns_final_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"\n\n one \n\n") == [b" one "]
    assert splitter.feed(b"two") == []
    assert splitter.close() == [b"two"]
    assert splitter.close() == []


def test_line_splitter_close_ignores_whitespace_tail() -> None:
    splitter = LineSplitter()
    splitter.feed(b"x\n  ")
    assert splitter.close() == []


def test_line_splitter_limits() -> None:
    with pytest.raises(FramingError):
        LineSplitter(max_buffer=8).feed(b"0123456789")
    with pytest.raises(FramingError) as info:
        LineSplitter(max_buffer=8).feed(b"ok\n0123456789\nok\n")
    assert info.value.events == [b"ok"]
    with pytest.raises(FramingError) as info:
        LineSplitter(max_buffer=8).feed(b"ok\n\n0123456789")
    assert info.value.events == [b"ok"]
    assert LineSplitter(max_buffer=8).feed(b"01234567\n" * 4) == [b"01234567"] * 4


# --------------------------------------------------------------------------- properties

_SSE_PIECES = st.sampled_from(
    [
        b"data: x",
        b"data:y",
        b"data",
        b"event: e",
        b": c",
        b"id: 1",
        b"\n",
        b"\r",
        b"\r\n",
        b" ",
        b"\xef\xbb\xbf",
        b'data: {"a": "\xc3\xa9"}',
    ]
)


def _limited(body: bytes, cuts: list[int], max_buffer: int) -> tuple[list[SSEEvent], bool]:
    """Events and whether a FramingError ended the stream, feeding *body* cut at *cuts*."""
    parser = SSEParser(max_buffer=max_buffer)
    out: list[SSEEvent] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    try:
        for a, b in pairwise(bounds):
            out += parser.feed(body[a:b])
        out += parser.close()
    except FramingError as exc:
        return out + exc.events, True
    return out, False


@settings(max_examples=200, deadline=None)
@given(
    body=st.lists(_SSE_PIECES, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_sse_any_split_yields_the_same_events(body: bytes, cuts: list[int]) -> None:
    assert sse_split(body, cuts) == sse_all(body)


@settings(max_examples=200, deadline=None)
@given(
    body=st.lists(_SSE_PIECES, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    max_buffer=st.integers(min_value=4, max_value=40),
)
def test_sse_limits_do_not_depend_on_the_split(
    body: bytes, cuts: list[int], max_buffer: int
) -> None:
    assert _limited(body, cuts, max_buffer) == _limited(body, [], max_buffer)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=10))
def test_sse_random_bytes_any_split(body: bytes, cuts: list[int]) -> None:
    assert sse_split(body, cuts) == sse_all(body)


def _lines_split(body: bytes, cuts: list[int], max_buffer: int) -> tuple[list[bytes], bool]:
    splitter = LineSplitter(max_buffer=max_buffer)
    out: list[bytes] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    try:
        for a, b in pairwise(bounds):
            out += splitter.feed(body[a:b])
        out += splitter.close()
    except FramingError as exc:
        return out + exc.events, True
    return out, False


@settings(max_examples=200, deadline=None)
@given(
    body=st.lists(st.sampled_from([b"{}", b"\n", b" ", b'{"a":1}', b"x"]), max_size=40).map(
        b"".join
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    max_buffer=st.sampled_from([6, 12, 1 << 20]),
)
def test_line_splitter_any_split(body: bytes, cuts: list[int], max_buffer: int) -> None:
    got = _lines_split(body, cuts, max_buffer)
    assert got == _lines_split(body, [], max_buffer)
    if max_buffer == 1 << 20:
        assert got == ([line for line in body.split(b"\n") if line.strip()], False)
