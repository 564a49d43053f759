"""The public fault-injection kit: fake providers that fail on purpose, an in-memory twin
transport, and Hypothesis support (imported lazily)."""

__all__: list[str] = []
