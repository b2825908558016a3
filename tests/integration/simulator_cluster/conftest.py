from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A state dir short enough for Unix socket paths (pytest's tmp_path can exceed 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
