"""Shared fixtures: seeded torch, the shared data root (tests needing it skip cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def _find_data_root() -> Path | None:
    env = os.environ.get("ROBUSTIR_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    candidate = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


DATA_ROOT = _find_data_root()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def data_root() -> Path:
    """The shared data folder (../shared/data or $ROBUSTIR_DATA); skips the test when it is absent."""
    if DATA_ROOT is None:
        pytest.skip("shared data root not found (set ROBUSTIR_DATA or place it at ../shared/data)")
    return DATA_ROOT
