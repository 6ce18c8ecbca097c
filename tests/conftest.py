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


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory: pytest.TempPathFactory):
    """The known-answer toy world, built once for the DPO and the evaluation tests."""
    from dpo.toy import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy-world"))


@pytest.fixture(scope="session")
def toy_expert(toy_world):
    """The expert of the DPO known-answer test (300 steps), shared with the evaluation end to end."""
    from dpo.toy import train_toy_expert

    return train_toy_expert(*toy_world, "expert")
