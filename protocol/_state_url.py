"""Where a runtime keeps its state: ``[runtime] state``, parsed (pure).

``"local"`` (the default) keeps limits, breakers and usage in the process, as before. A Redis
URL shares them with every process that uses the same Redis database::

    redis://host:port/db       (port 6379 and db 0 when left out)
    rediss://host:port/db      (TLS)
    redis://user@host:port/db  (an ACL user; its password goes in state_password)

A password inside the URL is refused: the URL is a plain string that ends up in config dumps
and log lines, while ``state_password`` is a `Secret` like every other credential.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import msgspec

LOCAL = "local"


class StateUrl(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed Redis state URL. ``display`` is the URL as shown in health and logs."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    tls: bool = False

    @property
    def display(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        user = "" if self.username is None else f"{self.username}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


EXPECTED = (
    'expected "local" or a Redis URL such as "redis://127.0.0.1:6379/0" '
    "(redis:// or rediss://, a host, an optional port and database number)"
)


def parse_state(text: str) -> StateUrl | None:
    """*text* as a `StateUrl`, or ``None`` for ``"local"``. Raises `ValueError` saying what
    was expected; the message never repeats a password."""
    if text.strip() == LOCAL:
        return None
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{EXPECTED}; the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(EXPECTED)
    if parts.password is not None:
        raise ValueError(
            'expected no password in the URL: put it in state_password = env("VAR")'
        )
    if not parts.hostname:
        raise ValueError(f"{EXPECTED}; the host is missing")
    if parts.query or parts.fragment:
        raise ValueError(f"{EXPECTED}; no ?query or #fragment")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"{EXPECTED}; the database must be a number, got {path!r}")
    return StateUrl(
        host=parts.hostname,
        port=6379 if port is None else port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        tls=parts.scheme == "rediss",
    )
