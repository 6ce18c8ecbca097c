"""Shared fixtures: tiny random models written once per test session, fully offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from coprov2.tiny import write_tiny_models

# The suite runs on two pytest-xdist workers (pyproject's addopts: CI has two cores), each on one CPU thread, and
# so does every process a test starts (OMP_NUM_THREADS): at two threads each they overcommit two cores, and two
# workflow runs side by side took 175 s each, against 54 s for one alone. vLLM's CPU engine would pin every
# engine to the same core (VLLM_CPU_OMP_THREADS_BIND=auto); here it leaves the threads to the OS. In one process
# (``-n 0``), two threads; ``benchmarks/suite_time.py`` times both.
#
# The known answers start from the committed toy base (dpo.toy.SHIPPED_TOY_BASE): pretraining it sums in another
# order per kernel family and thread count, and the base's safe share moved from 0.375 to 0.500 with them. From
# the shipped base, the DPO known answers give the same table in every family and thread count measured, 1 and 2
# (benchmarks/kernel_families.py, docs/known_answers.md); tests/test_kernel_family.py rebuilds the base.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

#: Test modules whose tests share the session's ``toy_experts``: one xdist work unit, so they are trained once.
SHARE_TOY_EXPERTS = ("test_dpo", "test_evaluation")
#: The longest work units (module-scoped runs of the workflow and the build, the toy experts), started first so
#: that neither worker is left with one of them at the end.
LONGEST_FIRST = ("test_workflow", "test_build_e2e", *SHARE_TOY_EXPERTS, "test_kernel_family", "test_flow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest work units first (``--no-loadscope-reorder`` keeps this order); stable within each module."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile``, each test module whole on one worker (its module-scoped fixtures built once), except
    that the modules sharing the toy experts are one unit. Written here because ``--dist loadgroup`` with
    ``xdist_group`` marks is silently ignored on pytest 9.2 (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesSharingFixtures(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "toy-experts" if Path(module).stem in SHARE_TOY_EXPERTS else module

    return ModulesSharingFixtures(config, log)


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
    from dpo.toy import train_known_answer_experts

    return train_known_answer_experts(toy_world)
