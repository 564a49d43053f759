"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_FIXTURES = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "providers"
)


@pytest.fixture
def recordings() -> Path:
    """``../shared/fixtures/providers`` (recorded real provider traffic).

    Skips the test cleanly when the folder is absent: the project must pass on a fresh clone
    without it. Never copy files from it into the project.
    """
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures/providers is not present beside the project")
    return SHARED_FIXTURES
