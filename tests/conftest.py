"""Shared pytest setup: the `--update-goldens` flag and paths to the project's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens", action="store_true",
        help="rewrite the golden files from the current output; review the diff before committing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


# The tests read the shared data through the documented variable (never a path baked into the product),
# and subprocesses inherit it.
os.environ.setdefault("CNNC_DATA", str(SHARED_DATA))
