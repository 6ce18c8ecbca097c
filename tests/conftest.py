"""Shared fixtures: tiny random models written once per test session, fully offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest

from coprov2.tiny import write_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders ``sd15``, ``sdxl``, ``clip``, ``lm`` holding tiny random models (seed 0)."""
    return write_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)
