"""The DPO known answer in a second CPU kernel family: the same test, run again with ``ATEN_CPU_CAPABILITY=default``.

PyTorch picks its CPU kernels by instruction set, and each family sums in another order; CI is one CPU, users'
are not. ``benchmarks/kernel_families.py`` measures every family and thread count (docs/known_answers.md); this
keeps the cheapest of them, the family every x86 CPU can run, in the suite.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
KNOWN_ANSWER = "tests/test_dpo.py::test_known_answer_expert_moves_its_caption_toward_the_winner"


@pytest.mark.slow
def test_the_dpo_known_answer_holds_in_the_default_kernel_family():
    if torch.backends.cpu.get_cpu_capability().lower() == "default":
        pytest.skip("this CPU's own kernel family is `default`: the suite itself ran the known answer there")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", KNOWN_ANSWER]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "1 passed" in result.stdout
