"""`StreamAccumulator`: folding stream events into a `Completion`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._accumulate import StreamAccumulator
from protocol._errors import ErrorKind
from protocol._messages import (
    Completion,
    Failure,
    Finished,
    ReasoningDelta,
    Restart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)


def test_empty_stream() -> None:
    acc = StreamAccumulator()
    assert acc.completion() == Completion()
    assert not acc.finished
    assert acc.failure is None
    assert acc.events == 0


def test_text_concatenates() -> None:
    acc = StreamAccumulator()
    for piece in ("Hel", "lo", ", ", "world"):
        acc.add(TextDelta(text=piece))
    assert acc.text == "Hello, world"
    assert acc.completion().text == "Hello, world"
    assert acc.events == 4


def test_reasoning_is_kept_apart_from_text() -> None:
    acc = StreamAccumulator()
    acc.add(ReasoningDelta(text="think "))
    acc.add(TextDelta(text="answer"))
    acc.add(ReasoningDelta(text="more"))
    completion = acc.completion()
    assert completion.text == "answer"
    assert completion.reasoning == "think more"
    assert acc.events == 3


def test_tool_call_fragments_assemble_by_index() -> None:
    acc = StreamAccumulator()
    acc.add(ToolCallDelta(index=1, id="call_b", name="lookup", arguments='{"q":'))
    acc.add(ToolCallDelta(index=0, id="call_a", name="weather"))
    acc.add(ToolCallDelta(index=0, arguments='{"city": '))
    acc.add(ToolCallDelta(index=1, arguments=' "x"}'))
    acc.add(ToolCallDelta(index=0, arguments='"Paris"}'))
    calls = acc.tool_calls()
    assert calls == [
        ToolCall(id="call_a", name="weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_b", name="lookup", arguments='{"q": "x"}'),
    ]
    assert calls[0].parsed_arguments() == {"city": "Paris"}
    assert acc.completion().tool_calls == calls


def test_tool_call_without_arguments_gets_empty_object() -> None:
    acc = StreamAccumulator()
    acc.add(ToolCallDelta(index=0, id="c", name="now"))
    assert acc.tool_calls() == [ToolCall(id="c", name="now", arguments="{}")]


def test_later_fragments_without_id_keep_the_first_id_and_name() -> None:
    acc = StreamAccumulator()
    acc.add(ToolCallDelta(index=0, id="c1", name="f", arguments="{"))
    acc.add(ToolCallDelta(index=0, id=None, name=None, arguments="}"))
    assert acc.tool_calls() == [ToolCall(id="c1", name="f", arguments="{}")]


def test_restart_discards_everything_emitted() -> None:
    acc = StreamAccumulator()
    acc.add(TextDelta(text="partial answer from the first target"))
    acc.add(ReasoningDelta(text="hmm"))
    acc.add(ToolCallDelta(index=0, id="x", name="f", arguments="{"))
    acc.add(Restart(reason="stream_interrupted", connection="b", model="m2"))
    assert acc.text == ""
    assert acc.tool_calls() == []
    assert acc.events == 0
    acc.add(TextDelta(text="fresh"))
    acc.add(Finished(finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1)))
    completion = acc.completion()
    assert completion.text == "fresh"
    assert completion.reasoning == ""
    assert acc.events == 1


def test_usage_update_then_finished() -> None:
    acc = StreamAccumulator()
    acc.add(UsageUpdate(usage=Usage(input_tokens=10)))
    assert acc.usage == Usage(input_tokens=10)
    acc.add(UsageUpdate(usage=Usage(input_tokens=10, output_tokens=3)))
    assert acc.usage == Usage(input_tokens=10, output_tokens=3)  # cumulative, not summed
    assert acc.events == 0  # usage is not content
    final = Usage(input_tokens=10, output_tokens=7, cache_read_tokens=4)
    acc.add(Finished(finish_reason="length", usage=final, model="gpt-4o-2024", response_id="r1"))
    assert acc.finished
    completion = acc.completion()
    assert completion.usage == final
    assert completion.finish_reason == "length"
    assert completion.model == "gpt-4o-2024"
    assert completion.response_id == "r1"


def test_finished_without_model_keeps_the_previous_one() -> None:
    acc = StreamAccumulator()
    acc.add(Finished(model="m1", response_id="r1"))
    acc.add(Finished())
    assert (acc.model, acc.response_id) == ("m1", "r1")


def test_failure_is_recorded() -> None:
    acc = StreamAccumulator()
    acc.add(TextDelta(text="so far"))
    failure = Failure.of(ErrorKind.STREAM_INTERRUPTED, "cut")
    acc.add(failure)
    assert acc.failure is failure
    assert not acc.finished
    assert acc.events == 1  # something was already emitted
    assert acc.completion().text == "so far"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=5), max_size=10), st.lists(st.text(max_size=5), max_size=10))
def test_text_after_restart_is_only_the_new_text(before: list[str], after: list[str]) -> None:
    acc = StreamAccumulator()
    for piece in before:
        acc.add(TextDelta(text=piece))
    acc.add(Restart(reason="r"))
    for piece in after:
        acc.add(TextDelta(text=piece))
    assert acc.text == "".join(after)
    assert acc.events == len(after)
