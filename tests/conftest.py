"""Shared pytest fixtures (seeded, nilearn style)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


@pytest.fixture
def target_rng() -> np.random.Generator:
    """Seeded generator for target/seed-map tests."""
    return np.random.default_rng(20261124)
