"""Shared fixtures: tiny random models written once per test session, fully offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from coprov2.tiny import write_tiny_models

# Two CPU threads (CI's cores) whatever the machine: CPU kernels sum in another order with another thread
# count, and the toy world's known answers (a pretrained base, then a few hundred DPO steps) drift apart from there
# (the base's safe share is 0.500 with 2 threads, 0.453 with 1). Their thresholds were measured with 2.
torch.set_num_threads(2)


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
def toy_experts(toy_world):
    """The DPO known-answer experts, one per seed of ``KNOWN_ANSWER_SEEDS``, shared with
    the evaluation end to end: every known answer that trains is claimed on their mean."""
    from dpo.toy import KNOWN_ANSWER_SEEDS, train_toy_expert

    return [train_toy_expert(*toy_world, f"expert-seed-{seed}", seed=seed) for seed in KNOWN_ANSWER_SEEDS]
