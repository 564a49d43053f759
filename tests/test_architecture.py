"""The architecture, enforced: import direction, purity of `protocol/` and of the pure state
machines, and honest public surfaces (``__all__`` sorted and complete)."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "actors", "actors.testing", "supervisors")

# Modules that must stay free of I/O libraries: they take `now` and `rng` as arguments.
PURE_MACHINES = (
    "actors/_breaker.py",
    "actors/_retry.py",
    "actors/_limiter.py",
    "actors/_client_keys.py",
    "actors/_shared_limits.py",
    "supervisors/_intensity.py",
)
IO_LIBRARIES = {"trio", "httpx", "trio_websocket", "httpcore", "anyio", "asyncio", "socket"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in *path* (relative imports are skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources(package_dir: str) -> list[Path]:
    return sorted((ROOT / package_dir).rglob("*.py"))


def test_protocol_imports_only_stdlib_and_msgspec() -> None:
    allowed = set(sys.stdlib_module_names) | {"msgspec", "protocol", "__future__"}
    allowed -= IO_LIBRARIES
    for path in sources("protocol"):
        extra = imported_roots(path) - allowed
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_actors_never_import_supervisors() -> None:
    for path in sources("actors"):
        assert "supervisors" not in imported_roots(path), path.relative_to(ROOT)


def test_protocol_imports_neither_actors_nor_supervisors() -> None:
    for path in sources("protocol"):
        roots = imported_roots(path)
        assert not roots & {"actors", "supervisors"}, path.relative_to(ROOT)


@pytest.mark.parametrize("relpath", PURE_MACHINES)
def test_pure_machines_import_no_io(relpath: str) -> None:
    path = ROOT / relpath
    if not path.exists():
        pytest.fail(f"{relpath} is listed as a pure machine but does not exist")
    bad = imported_roots(path) & (IO_LIBRARIES | {"time", "random"})
    assert not bad, f"{relpath} imports {sorted(bad)}: pass `now`/`rng` in instead"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr not in {"annotations"}
    }
    lazy = {attr for attr in exported if attr not in vars(module)}  # served by __getattr__
    assert public == set(exported) - lazy, (
        f"{name}: public names not in __all__: {public - set(exported)}"
    )


@pytest.mark.parametrize("name", PACKAGES)
def test_private_modules_start_with_underscore(name: str) -> None:
    package_dir = ROOT / name.replace(".", "/")
    for path in package_dir.glob("*.py"):
        assert path.name == "__init__.py" or path.name.startswith("_"), path


@pytest.mark.parametrize("name", ["protocol", "actors", "supervisors"])
def test_py_typed_present(name: str) -> None:
    assert (ROOT / name / "py.typed").exists()


def test_importing_supervisors_stays_light() -> None:
    """`import supervisors` must not pull in the CLI, the fault kit, Hypothesis or the
    WebSocket stack (DESIGN: keep it ≤0.3 s / ≤40 MB; timing is measured in bench/, this test
    checks the cause: which modules get imported)."""
    import subprocess
    import sys

    code = (
        "import sys, supervisors, actors, protocol; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'hypothesis', 'trio_websocket', 'wsproto', 'h11'} or m in "
        "{'supervisors._cli', 'actors.testing', 'supervisors._serving', 'actors._gateway', "
        "'actors._client'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == ""
