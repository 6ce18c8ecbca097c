"""What the workflow tests of each recipe share: the command, a run's artifacts as compared, and its push."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from tests.mock_hub import install_mock_hub


def command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workflow", str(recipe), "--output_dir", str(out), "--no_progress", *extra]


def cold_run(recipe: Path, out: Path) -> Path:
    """``recipe`` as shipped, uninterrupted: the reference of the resume tests."""
    result = subprocess.run(command(recipe, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def eval_results(folder: Path) -> list[tuple]:
    card = ModelCard.load(folder / "README.md")
    return sorted(
        (r.dataset_name, r.dataset_split or "", r.metric_name, r.metric_value) for r in card.data.eval_results
    )


def push_to_mock_hub(
    recipe: Path, run: Path, monkeypatch, prefix: str, router: bool = False
) -> dict[str, dict[str, bytes]]:
    """The finished ``run`` pushed to the mock Hub as ``--push_experts``/``--push_merged`` (and ``--push_router``)
    push it (every other step skipped): ``{repo id: {path: bytes}}`` of everything uploaded."""
    from workflow.config import load_recipe
    from workflow.run import run_workflow

    hub = install_mock_hub(monkeypatch)
    config = load_recipe(recipe, output_dir=str(run), push_experts=f"{prefix}-{{category}}",
                         push_merged=f"{prefix}-merged", push_router=f"{prefix}-router" if router else None,
                         progress=False)  # fmt: skip
    records = run_workflow(config)
    assert [name for name, r in records.items() if not r.get("skipped")] == ["push"], records
    pushed: dict[str, dict[str, bytes]] = {}
    for repo, path, content in hub.uploads:
        pushed.setdefault(repo.removeprefix("/api/models/"), {})[path] = content
    return pushed


def assert_no_local_path(pushed: dict[str, dict[str, bytes]], folder: Path) -> None:
    """No uploaded byte holds ``folder``, and each card's usage snippet loads its own repo."""
    leaks = [(repo, path) for repo, files in pushed.items() for path, content in files.items()
             if str(folder).encode() in content]  # fmt: skip
    assert not leaks, leaks
    cards = {repo: files["README.md"].decode() for repo, files in pushed.items()}
    loads = ("load_lora_weights", "ConceptRouter.from_pretrained")
    assert all(any(f'{call}("{repo}")' in card for call in loads) for repo, card in cards.items()), list(
        cards
    )


def kill_in_evaluation_and_rerun(recipe: Path, reference: Path, out: Path) -> str:
    """Run ``recipe`` on ``reference``'s dataset, SIGKILL it once its evaluation renders, rerun it to the end;
    returns the rerun's output."""
    argv = command(recipe, out, "--dataset", str(reference / "coprov2" / "dataset"))
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "eval-test" / "render-hate").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the evaluation"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was interrupted"
    assert (out / "workflow" / "merge.json").is_file() and not (out / "workflow" / "eval-test.json").exists()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "experts/hate: skipped, done before" in rerun.stdout and "eval-test: done" in rerun.stdout
    return rerun.stdout


def assert_same_loras_and_cards(out: Path, reference: Path, categories: list[str]) -> None:
    """Every expert's and the merge's LoRA tensors, and the model-index each card carries, are equal."""
    for name in [f"experts/{c}" for c in categories] + ["merged"]:
        ours, theirs = lora(out / name), lora(reference / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
        assert eval_results(out / name) == eval_results(reference / name), name


def assert_same_evaluation(out: Path, reference: Path, evaluation: str = "eval-test") -> int:
    """Every image of ``evaluation`` the same bytes as ``reference``'s and every model's metrics equal; returns
    how many images."""
    images = sorted(p.relative_to(out) for p in (out / evaluation / "images").rglob("*.png"))
    assert images and images == sorted(
        p.relative_to(reference) for p in (reference / evaluation / "images").rglob("*.png")
    ), evaluation
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in images), evaluation

    def metrics(root: Path) -> dict:
        models = json.loads((root / evaluation / "results.json").read_text())["models"]
        # where each run's LoRAs and router lie differs; what they made must not
        return {
            label: {k: v for k, v in m.items() if k not in ("lora", "routed_by")}
            for label, m in models.items()
        }

    assert metrics(out) == metrics(reference), evaluation
    return len(images)
