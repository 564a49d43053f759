# Why this module exists
# ----------------------
# Hand-picked examples test the faults we thought of; Hypothesis finds the combinations we did
# not (a 429 on the third request of a stream with tool calls, a stream cut at token 0, a byte
# stream split inside a UTF-8 sequence). Users of the kit need the same generators for their
# own clients, so they are public API: `chat_requests`, `fault_plans` (with `faults` and
# `rules`), and `byte_splits`.
#
# Choices (after Hypothesis' own API style guide): keyword-only options validated up front with
# a clear error; every strategy produces only *valid* values - a generated `ChatRequest`
# round-trips through msgspec, a generated `FaultPlan` passes the plan's own validation - so a
# failing test is always about the code under test, never about the generator; sizes and
# durations are small by default so that examples stay fast (faults that wait use fractions of
# a second, which the autojump clock skips anyway). Examples shrink towards the simplest case:
# one user message, a healthy plan, a body in one piece.
#
# This module imports Hypothesis at the top; the package imports it lazily, so that
# ``import actors.testing`` does not pay for Hypothesis.

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from protocol._messages import (
    ChatRequest,
    ContentPart,
    Message,
    TextPart,
    Tool,
    ToolResultPart,
    ToolUsePart,
)

from ._faults import (
    ContentFiltered,
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Healthy,
    Latency,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    PrefillRejected,
    RateLimited,
    ResetBeforeHeaders,
    Rule,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)

__all__ = [
    "byte_splits",
    "chat_requests",
    "fault_plans",
    "faults",
    "rules",
]

DIALECTS = ("openai", "anthropic", "gemini", "ollama")

_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # no lone surrogates: not UTF-8
    min_size=1,
    max_size=40,
)
_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
_ARGUMENTS = st.dictionaries(
    _NAME, st.one_of(st.integers(-1000, 1000), _TEXT, st.booleans()), max_size=3
)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


# --------------------------------------------------------------------------- requests


@st.composite
def _tool_turn(draw: st.DrawFn, tools: Sequence[Tool]) -> list[Message]:
    """An assistant turn calling 1-2 tools, then the tool message answering every call."""
    calls = draw(st.integers(1, 2))
    uses: list[ContentPart] = []
    results: list[ContentPart] = []
    for i in range(calls):
        tool = draw(st.sampled_from(list(tools)))
        call_id = f"call_{draw(st.integers(0, 10**6))}_{i}"
        uses.append(ToolUsePart(id=call_id, name=tool.name, arguments=draw(_ARGUMENTS)))
        results.append(
            ToolResultPart(
                tool_use_id=call_id,
                content=draw(_TEXT),
                name=tool.name,
                is_error=draw(st.booleans()),
            )
        )
    lead: list[ContentPart] = [TextPart(text=draw(_TEXT))] if draw(st.booleans()) else []
    return [
        Message(role="assistant", content=lead + uses),
        Message(role="tool", content=results),
    ]


def _text_content(draw: st.DrawFn) -> str | list[ContentPart]:
    if draw(st.booleans()):
        return draw(_TEXT)
    parts = draw(st.lists(_TEXT, min_size=1, max_size=3))
    return [TextPart(text=p) for p in parts]


@st.composite
def _chat_requests(
    draw: st.DrawFn,
    models: Sequence[str],
    max_turns: int,
    stream: bool | None,
    tools: bool,
    prefill: bool,
    timeouts: bool,
) -> ChatRequest:
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=draw(_TEXT)))
    tool_defs: list[Tool] = []
    if tools and draw(st.booleans()):
        names = draw(st.lists(_NAME, min_size=1, max_size=3, unique=True))
        tool_defs = [
            Tool(name=n, description=draw(_TEXT), parameters={"type": "object"}) for n in names
        ]
    turns = draw(st.integers(1, max_turns))
    for turn in range(turns):
        messages.append(Message(role="user", content=_text_content(draw)))
        if turn < turns - 1:
            call_tools: bool = bool(tool_defs) and draw(st.booleans())
            if call_tools:
                messages += draw(_tool_turn(tool_defs))
            else:
                messages.append(Message(role="assistant", content=_text_content(draw)))
    if prefill and draw(st.booleans()):
        messages.append(Message(role="assistant", content=draw(_TEXT)))
    return ChatRequest(
        model=draw(st.sampled_from(list(models))),
        messages=messages,
        max_tokens=draw(st.none() | st.integers(1, 4096)),
        temperature=draw(st.none() | st.floats(0.0, 2.0)),
        stream=draw(st.booleans()) if stream is None else stream,
        tools=tool_defs,
        tool_choice=draw(st.sampled_from([None, "auto", tool_defs[0].name])) if tool_defs else None,
        timeout=draw(st.none() | st.floats(0.5, 60.0)) if timeouts else None,
        request_id=f"req-{draw(st.integers(0, 2**63))}",
    )


def chat_requests(
    *,
    models: Sequence[str] = ("fake-model",),
    max_turns: int = 3,
    stream: bool | None = None,
    tools: bool = True,
    prefill: bool = False,
    timeouts: bool = True,
) -> st.SearchStrategy[ChatRequest]:
    """Valid `ChatRequest`s.

    *models*: the model names to pick from. *max_turns*: user turns (each but the last answered
    by an assistant turn, which may call tools and get a ``tool`` message back). *stream*:
    ``None`` for both, or only streamed / non-streamed. *tools*: may define tools and replay
    tool calls. *prefill*: may end with an assistant message (a prefill). *timeouts*: may set
    ``timeout`` (0.5-60 s). Optional ``max_tokens`` and ``temperature``; a random
    ``request_id`` (unique within a test run in practice; use ``st.lists(..., unique_by=...)``
    when a batch needs distinct ids).
    """
    models = list(models)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ValueError("models must be a non-empty sequence of non-empty strings")
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns!r}")
    return _chat_requests(models, max_turns, stream, tools, prefill, timeouts)


# --------------------------------------------------------------------------- faults and plans


def _seconds(max_seconds: float) -> st.SearchStrategy[float]:
    return st.floats(0.0, max_seconds, allow_nan=False)


def faults(
    *, max_seconds: float = 0.5, max_tokens: int = 5, hangs: bool = True
) -> st.SearchStrategy[Fault]:
    """Any one fault of the kit, with small parameters: delays up to *max_seconds*, cut and
    stall points up to *max_tokens* tokens. With ``hangs=False``, no fault that keeps a
    connection silent forever (`NoResponse`, a `Stall` with ``then="hang"``): use it when the
    client under test has no timeout of its own."""
    _check_positive("max_seconds", max_seconds)
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens!r}")
    tokens = st.integers(0, max_tokens)
    latency = _seconds(max_seconds).flatmap(
        lambda low: st.builds(Latency, seconds=st.just(low), up_to=st.none() | _between(low))
    )
    options: list[st.SearchStrategy[Any]] = [
        st.just(Healthy()),
        latency,
        st.builds(
            RateLimited,
            retry_after=st.none() | _seconds(max_seconds),
            header=st.sampled_from(["seconds", "ms", "date", "none"]),
        ),
        st.builds(ServerError, status=st.sampled_from([500, 502, 503, 504, 529])),
        st.just(Unauthorized()),
        st.just(ContextLengthExceeded()),
        st.just(ContentFiltered()),
        st.just(PrefillRejected()),
        st.just(ResetBeforeHeaders()),
        st.builds(SlowFirstToken, seconds=_seconds(max_seconds)),
        st.builds(StreamCut, after_tokens=tokens, how=st.sampled_from(["reset", "eof"])),
        st.builds(
            Stall,
            after_tokens=tokens,
            seconds=_seconds(max_seconds),
            then=st.sampled_from(["continue", "hang"] if hangs else ["continue"]),
        ),
        st.builds(MalformedChunk, after_tokens=tokens),
        st.just(MissingTerminator()),
        st.builds(MidStreamError, after_tokens=tokens),
    ]
    if hangs:
        options.append(st.just(NoResponse()))
    return st.one_of(options)


def _between(low: float) -> st.SearchStrategy[float]:
    return st.floats(low, low + 1.0, allow_nan=False)


@st.composite
def _rules(
    draw: st.DrawFn, fault: st.SearchStrategy[Fault], models: Sequence[str], max_arrival: int
) -> Rule:
    arrivals = st.integers(1, max_arrival)
    low = draw(st.none() | arrivals)
    high = draw(st.none() | st.integers(low or 1, max_arrival))
    after = draw(st.none() | _seconds(5.0))
    until = draw(st.none() | st.floats(after or 0.0, 10.0, allow_nan=False))
    return Rule(
        fault=draw(fault),
        models=tuple(draw(st.lists(st.sampled_from(list(models)), max_size=2, unique=True)))
        if models
        else (),
        dialects=tuple(draw(st.lists(st.sampled_from(DIALECTS), max_size=2, unique=True))),
        arrivals=tuple(draw(st.lists(arrivals, max_size=3, unique=True))),
        arrival_from=low,
        arrival_to=high,
        per_model=draw(st.booleans()),
        after_s=after,
        until_s=until,
        stream=draw(st.none() | st.booleans()),
        probability=draw(st.sampled_from([1.0, 1.0, 0.5]) | st.floats(0.0, 1.0)),
    )


def rules(
    *,
    fault: st.SearchStrategy[Fault] | None = None,
    models: Sequence[str] = (),
    max_arrival: int = 10,
) -> st.SearchStrategy[Rule]:
    """Valid `Rule`s: a fault from *fault* (default `faults()`) and random selectors - models
    from *models* (none when empty), dialects, arrival numbers up to *max_arrival*, time
    windows, stream or not, and a probability."""
    if max_arrival < 1:
        raise ValueError(f"max_arrival must be >= 1, got {max_arrival!r}")
    return _rules(fault if fault is not None else faults(), list(models), max_arrival)


@st.composite
def _fault_plans(
    draw: st.DrawFn,
    fault: st.SearchStrategy[Fault],
    models: Sequence[str],
    max_rules: int,
    max_sequence: int,
) -> FaultPlan:
    return FaultPlan(
        rules=tuple(draw(st.lists(_rules(fault, models, 10), max_size=max_rules))),
        sequence=tuple(draw(st.lists(fault, max_size=max_sequence))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def fault_plans(
    *,
    fault: st.SearchStrategy[Fault] | None = None,
    models: Sequence[str] = (),
    max_rules: int = 3,
    max_sequence: int = 3,
) -> st.SearchStrategy[FaultPlan]:
    """Valid `FaultPlan`s: up to *max_rules* `rules` and a *max_sequence*-long sequence, their
    faults drawn from *fault* (default `faults()`; e.g. ``faults(hangs=False)``), and a seed.
    Shrinks towards the healthy plan."""
    if max_rules < 0 or max_sequence < 0:
        raise ValueError("max_rules and max_sequence must be >= 0")
    return _fault_plans(
        fault if fault is not None else faults(), list(models), max_rules, max_sequence
    )


# --------------------------------------------------------------------------- byte splits


@st.composite
def _byte_splits(draw: st.DrawFn, data: bytes, max_pieces: int | None) -> list[bytes]:
    limit = max(0, len(data) - 1) if max_pieces is None else min(max_pieces - 1, len(data) - 1)
    cuts = draw(
        st.lists(st.integers(1, len(data) - 1), max_size=limit, unique=True)
        if len(data) > 1 and limit > 0
        else st.just([])
    )
    bounds = [0, *sorted(cuts), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)] if data else []
    if draw(st.booleans()):
        # Empty reads happen too (a transport may hand over b"" between chunks).
        at = draw(st.integers(0, len(pieces)))
        pieces.insert(at, b"")
    return pieces


def byte_splits(data: bytes, *, max_pieces: int | None = None) -> st.SearchStrategy[list[bytes]]:
    """Lists of chunks whose concatenation is exactly *data*: every way a transport may cut a
    body (cuts anywhere, even inside a UTF-8 sequence or an SSE separator; at most one empty
    chunk; empty *data* gives ``[]`` or ``[b""]``). *max_pieces* bounds the number of non-empty
    pieces. Shrinks towards one piece."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if max_pieces is not None and max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces!r}")
    return _byte_splits(bytes(data), max_pieces)
