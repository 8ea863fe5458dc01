"""Shared fixtures: fixed seeds, so every test sees the same random numbers on every run."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Seed torch's global generator (module initialisers use it) before each test."""
    torch.manual_seed(0)


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded generator for test inputs: pass it as ``generator=rng``."""
    return torch.Generator().manual_seed(1234)
