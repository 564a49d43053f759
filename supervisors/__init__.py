"""Who keeps them alive: the supervision tree, the runtime facade and the command line."""

__all__: list[str] = []
