"""Folding a stream of events into the `Completion` it amounts to.

The actor, the router, the gateway client and the tests all need "what did this stream say in
the end": the text, the tool calls assembled from their fragments, the finish reason and the
final usage. `StreamAccumulator` is that fold, written once. A `Restart` event discards what
was accumulated, exactly as a client must.
"""

from __future__ import annotations

from ._messages import (
    Completion,
    DecodedItem,
    Failure,
    Finished,
    FinishReason,
    ReasoningDelta,
    Restart,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)


class StreamAccumulator:
    """Feed it events with `add`; read the result with `completion()`.

    ``failure`` holds the terminal `Failure` if one was added; ``finished`` tells whether a
    `Finished` event arrived; ``events`` counts content events (text, reasoning, tool calls),
    which is what "something was already emitted" means for retry decisions.
    """

    __slots__ = (
        "_calls",
        "_reasoning",
        "_text",
        "events",
        "failure",
        "finish_reason",
        "finished",
        "model",
        "response_id",
        "usage",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, list[str]] = {}
        self.usage = Usage()
        self.finish_reason: FinishReason = "stop"
        self.finished = False
        self.failure: Failure | None = None
        self.model = ""
        self.response_id = ""
        self.events = 0

    def add(self, item: DecodedItem | StreamEvent) -> None:
        if isinstance(item, TextDelta):
            self._text.append(item.text)
            self.events += 1
        elif isinstance(item, ToolCallDelta):
            call = self._calls.setdefault(item.index, ["", "", ""])
            if item.id:
                call[0] = item.id
            if item.name:
                call[1] = item.name
            call[2] += item.arguments
            self.events += 1
        elif isinstance(item, ReasoningDelta):
            self._reasoning.append(item.text)
            self.events += 1
        elif isinstance(item, UsageUpdate):
            self.usage = item.usage
        elif isinstance(item, Finished):
            self.finished = True
            self.finish_reason = item.finish_reason
            self.usage = item.usage
            self.model = item.model or self.model
            self.response_id = item.response_id or self.response_id
        elif isinstance(item, Restart):
            self._text.clear()
            self._reasoning.clear()
            self._calls.clear()
            self.events = 0
        elif isinstance(item, Failure):
            self.failure = item

    @property
    def text(self) -> str:
        return "".join(self._text)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c[0], name=c[1], arguments=c[2] or "{}")
            for _, c in sorted(self._calls.items())
        ]

    def completion(self) -> Completion:
        """The completion the stream amounts to so far."""
        return Completion(
            text=self.text,
            tool_calls=self.tool_calls(),
            finish_reason=self.finish_reason,
            usage=self.usage,
            model=self.model,
            response_id=self.response_id,
            reasoning="".join(self._reasoning),
        )
