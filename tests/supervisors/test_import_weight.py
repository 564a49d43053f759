"""What `import supervisors` imports (bench/imports.py times it; this checks the cause): not
the config loader and tomllib (only for a TOML path), the gateway's wire frames, nor the
Redis-shared state (only with ``[runtime] state``). The packages' public names stay
reachable: they are imported on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = (
    "difflib",
    "tomllib",
    "protocol._config_load",
    "protocol._frames",
    "actors._shared_state",
    "actors._shared_limits",
    "actors._redis_state",
)


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return done.stdout.strip()


def test_importing_supervisors_leaves_optional_parts_out() -> None:
    code = f"import sys, supervisors; print(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    assert _run(code) == ""


def test_public_names_are_imported_on_first_use() -> None:
    code = (
        "import sys, protocol, actors; "
        "from protocol import loads_config, Hello; "
        "from actors import Connection, Router; "
        "print(loads_config.__module__, Hello.__module__, Connection.__module__, "
        "'protocol._config_load' in sys.modules)"
    )
    assert _run(code).split() == [
        "protocol._config_load",
        "protocol._frames",
        "actors._provider",
        "True",
    ]
