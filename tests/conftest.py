"""Shared fixtures: tiny random models written once per test session, fully offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from coprov2.tiny import write_tiny_models

# Two CPU threads (CI's cores) whatever the machine. The known answers start from the committed toy base
# (dpo.toy.SHIPPED_TOY_BASE): pretraining it sums in another order per kernel family and thread count, and the
# base's safe share moved from 0.375 to 0.500 with them. From the shipped base, the DPO known answers give the
# same table in every family and thread count measured (benchmarks/kernel_families.py, docs/known_answers.md).
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders ``sd15``, ``sdxl``, ``clip``, ``lm`` holding tiny random models (seed 0)."""
    return write_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory: pytest.TempPathFactory):
    """The known-answer toy world on the committed base, built once for the DPO and the evaluation tests."""
    from dpo.toy import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy-world"))


@pytest.fixture(scope="session")
def toy_experts(toy_world):
    """The DPO known-answer experts, one per seed of ``KNOWN_ANSWER_SEEDS``, shared with
    the evaluation end to end: every known answer that trains is claimed on their mean."""
    from dpo.toy import KNOWN_ANSWER_SEEDS, train_toy_expert

    return [train_toy_expert(*toy_world, f"expert-seed-{seed}", seed=seed) for seed in KNOWN_ANSWER_SEEDS]
