"""The ``switchboard`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``switchboard`` console script."""
    args = sys.argv[1:] if argv is None else argv
    print(
        f"switchboard {' '.join(args)}: not available yet in this build "
        "(the command line arrives with the gateway issue).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
