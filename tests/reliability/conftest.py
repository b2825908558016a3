"""Reliability scenarios (issue 11): faults, invariants and load against the embedded cluster.

CI runs the short versions (``pytest tests/reliability``); ``scripts/soak.py`` runs them with
``HAMI_SOAK_SCALE`` > 1 for the long soak and sums the invariant violations they report.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: fault-injection and invariant scenarios (scripts/soak.py runs them at scale)"
    )
