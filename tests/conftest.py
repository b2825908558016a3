from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared/ folder beside the checkout (spec, fixtures, openb trace)."""
    assert SHARED.is_dir(), f"expected the shared folder at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def h100_fixtures(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "h100"


@pytest.fixture(scope="session")
def kubectl() -> Path:
    path = REPO / ".tools" / "kubectl" / "kubectl"
    assert path.exists(), "kubectl missing: run scripts/fetch_tools.sh"
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    path = REPO / ".tools" / "helm" / "helm"
    assert path.exists(), "helm missing: run scripts/fetch_tools.sh"
    return path
