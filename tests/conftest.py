"""Shared fixtures: the repository root and the packaged resources built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def atlas_root(tmp_path_factory) -> Path:
    """Template, mask and AAL116 at 1, 2 and 4 mm, written once by the library."""
    from brainage.atlases import build_resources

    root = tmp_path_factory.mktemp("atlases")
    build_resources(root, [1, 2, 4])
    return root
