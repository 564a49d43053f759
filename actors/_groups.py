"""Exception groups, made bearable: what trio's strict nurseries raise, seen by callers.

Since trio 0.25 every nursery wraps what escapes it in an `ExceptionGroup`. That is right
inside the runtime, but wrong at an API boundary that *yields inside a nursery* (an async
context manager such as ``rt.stream()``): an exception raised by the caller's own block, or a
`RequestFailed`, would come back as ``ExceptionGroup([exc, Cancelled...])`` and slip past the
caller's ``except``. The usual trio pattern: when a group holds one real exception and
otherwise only the `Cancelled`s it caused, re-raise that one exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


def only_cancelled(exc: BaseException) -> bool:
    """True when *exc* is a `trio.Cancelled`, or a group made only of them."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(only_cancelled(e) for e in exc.exceptions)
    return False


def sole_error(exc: BaseException) -> BaseException | None:
    """The one non-`Cancelled` exception inside *exc* (a group, possibly nested), or ``None``
    when there are several, or none."""
    if not isinstance(exc, BaseExceptionGroup):
        return None if isinstance(exc, trio.Cancelled) else exc
    found: BaseException | None = None
    for inner in exc.exceptions:
        if only_cancelled(inner):
            continue
        leaf = sole_error(inner)
        if leaf is None or found is not None:
            return None
        found = leaf
    return found


def first_error(exc: BaseException) -> BaseException:
    """The first non-`Cancelled` leaf of *exc* (for messages), else *exc* itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if not only_cancelled(inner):
                return first_error(inner)
    return exc


@asynccontextmanager
async def unwrapping() -> AsyncIterator[None]:
    """Around a block that yields inside a nursery: when a group escapes that holds one real
    exception (plus the `Cancelled`s it caused), raise that exception instead, so callers'
    ``except RequestFailed`` / ``except KeyError`` work as written."""
    try:
        yield
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole  # noqa: B904 - the group is only the nursery's wrapping of it
