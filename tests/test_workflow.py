"""``python -m workflow``: the shipped tiny recipe runs the whole chain offline (build -> 7 experts -> merge ->
evaluation -> cards); a run killed part-way and rerun ends with the same artifacts as an uninterrupted one;
the reports open in a real browser; bad recipes fail before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import workflow
from tests.browser import check_report
from workflow.__main__ import main

RECIPE = Path(workflow.__file__).parent / "recipes" / "tiny.yaml"
CATEGORIES = ["harassment", "hate", "illegal-activity", "self-harm", "sexual", "shocking", "violence"]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workflow", str(RECIPE), "--output_dir", str(out), "--no_progress", *extra]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory) -> Path:
    """The shipped tiny recipe, as is, uninterrupted: the reference of the resume test."""
    out = tmp_path_factory.mktemp("workflow") / "cold"
    result = subprocess.run(_command(out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def _eval_results(folder: Path) -> list[tuple]:
    card = ModelCard.load(folder / "README.md")
    return sorted(
        (r.dataset_name, r.dataset_split or "", r.metric_name, r.metric_value) for r in card.data.eval_results
    )


@pytest.mark.slow
def test_the_tiny_recipe_runs_the_whole_chain(cold_run):
    summary = json.loads((cold_run / "workflow" / "summary.json").read_text())
    assert list(summary) == ["dataset", *[f"experts/{c}" for c in CATEGORIES], "merge", "eval-test",
                             *[f"redteam/{c}" for c in CATEGORIES], "eval-redteam"]  # fmt: skip
    assert summary["dataset"]["summary"]["rows"] > 0
    results = json.loads((cold_run / "eval-test" / "results.json").read_text())
    assert sorted(results["models"]) == sorted(["base", *CATEGORIES, "merged"])
    assert results["prompt_set"]["source"] == str(cold_run / "coprov2" / "dataset")
    for folder in [cold_run / "experts" / c for c in CATEGORIES] + [cold_run / "merged"]:
        assert _lora(folder), folder
        names = {name for _, _, name, _ in _eval_results(folder)}
        assert {"IP (nudenet)", "CLIPScore", "ASR (ringabell)"} <= names, folder
    assert (cold_run / "eval-test" / "report.html").is_file()
    redteam = json.loads((cold_run / "eval-redteam" / "results.json").read_text())
    assert redteam["attack"] == "ringabell" and sorted(redteam["models"]) == sorted(
        ["base", *CATEGORIES, "merged"]
    )
    assert all(set(m["asr"]["by_category"]) == set(CATEGORIES) for m in redteam["models"].values())
    assert "ASR overall (%)" in (cold_run / "eval-redteam" / "report.html").read_text()
    merge = json.loads((cold_run / "merged" / "merge_summary.json").read_text())
    assert merge["method"] == "regmean" and len(merge["experts"]) == 7


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_artifacts_of_an_uninterrupted_one(cold_run, tmp_path):
    out = tmp_path / "killed"
    # the same dataset as the cold run (its build has its own kill tests): experts, merge and evaluation are compared
    command = _command(out, "--dataset", str(cold_run / "coprov2" / "dataset"))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "eval-test" / "render-hate").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the evaluation"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was interrupted"
    assert (out / "workflow" / "merge.json").is_file() and not (out / "workflow" / "eval-test.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "experts/hate: skipped, done before" in rerun.stdout and "eval-test: done" in rerun.stdout
    # what is compared: every expert's and the merge's LoRA tensors, every rendered image byte for byte,
    # every model's metrics, and the model-index each card carries
    for name in [f"experts/{c}" for c in CATEGORIES] + ["merged"]:
        ours, reference = _lora(out / name), _lora(cold_run / name)
        assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours), name
        assert _eval_results(out / name) == _eval_results(cold_run / name), name
    images = sorted(p.relative_to(out) for p in (out / "eval-test" / "images").rglob("*.png"))
    assert len(images) == 9 * 3
    assert images == sorted(
        p.relative_to(cold_run) for p in (cold_run / "eval-test" / "images").rglob("*.png")
    )
    assert all((out / p).read_bytes() == (cold_run / p).read_bytes() for p in images)

    def metrics(root: Path) -> dict:
        models = json.loads((root / "eval-test" / "results.json").read_text())["models"]
        return {label: {k: v for k, v in m.items() if k != "lora"} for label, m in models.items()}

    assert metrics(out) == metrics(cold_run)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (
        again.returncode == 0 and again.stdout.count("skipped, done before") == 2 * len(CATEGORIES) + 3
    )  # all but the given dataset: the experts, the merge, eval-test, an attack per category, eval-redteam


@pytest.mark.slow
def test_the_reports_open_in_a_browser(cold_run, tmp_path):
    from evaluation.gallery import main as gallery_main

    counts = check_report(cold_run / "eval-test" / "report.html")
    assert counts["pages"] >= 2 and counts["images"] >= 9 * 3
    # the build's gallery: every pair, kept and rejected; unsafe images blurred (no detector ran)
    assert (
        gallery_main([str(cold_run / "coprov2"), "--output_dir", str(tmp_path), "--rows_per_page", "2"]) == 0
    )
    page = (tmp_path / "gallery" / "hate-1.html").read_text()
    assert "s(u img, u txt) = " in page and "kept" in page
    pages = "".join(p.read_text() for p in (tmp_path / "gallery").glob("*.html"))
    assert "rejected: " in pages, "the gate's rejected pairs are shown with their reasons"
    counts = check_report(tmp_path / "gallery.html")
    assert counts["flagged"] >= 7, "a blurred unsafe image revealed on every category's first page"


def test_bad_recipes_exit_2_before_any_work(tmp_path, capsys):
    cases = {
        "dataset: x\ndpo:\n  max_train_step: 4\n": "recipe.yaml: dpo: unknown option(s) max_train_step",
        "dataset: x\nbuild: {preset: smoke}\n": "give exactly one dataset source",
        "dataset: x\ndpo: {category: hate}\n": "recipe.yaml: dpo.category is set by the workflow",
        "dataset: x\nevaluation: {steps: 0}\n": "recipe.yaml: evaluation: --steps must be >= 1, got 0",
        "dataset: x\nmerge: {rank: 0}\n": "recipe.yaml: merge: --rank must be >= 1, got 0",
        "{}\n": "give exactly one dataset source",
        "dataset: x\nmerge: {method: best}\n": "recipe.yaml: merge: --method 'best' is unknown; choose from",
        "dataset: x\npush_experts: me/experts\n": "push_experts must hold {category}",
        "dataset: x\nlearning_rate: 1\n": "unknown recipe key(s) learning_rate",
        "dataset: x\ndataset: y\n": "appears twice",
    }
    for text, message in cases.items():
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text)
        assert main([str(recipe), "--output_dir", str(tmp_path / "out")]) == 2, text
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, (text, error)
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.slow
def test_the_pushed_run_holds_no_local_path_and_its_cards_load_their_repos(cold_run, monkeypatch):
    """The finished tiny run pushed to the (mock) Hub as ``--push_experts``/``--push_merged`` push it (every other
    step skipped): no uploaded byte holds the run's absolute folder, each card's usage snippet loads its own repo,
    and the model-index names the prompt set by its card's name, not a path."""
    from tests.mock_hub import install_mock_hub
    from workflow.config import load_recipe
    from workflow.run import run_workflow

    hub = install_mock_hub(monkeypatch)
    config = load_recipe(RECIPE, output_dir=str(cold_run), push_experts="me/sd15-safety-{category}",
                         push_merged="me/sd15-safety-merged", progress=False)  # fmt: skip
    records = run_workflow(config)
    assert [name for name, r in records.items() if not r.get("skipped")] == ["push"], records
    uploads = [(repo.removeprefix("/api/models/"), path, content) for repo, path, content in hub.uploads]
    repos = {f"me/sd15-safety-{c}" for c in [*CATEGORIES, "merged"]}
    assert {repo for repo, _, _ in uploads} == repos
    folder = str(cold_run.parent).encode()
    leaks = [(repo, path) for repo, path, content in uploads if folder in content]
    assert not leaks, leaks
    cards = {repo: content.decode() for repo, path, content in uploads if path == "README.md"}
    assert cards.keys() == repos and all(
        f'load_lora_weights("{repo}")' in card for repo, card in cards.items()
    )
    assert (
        "      name: CoProV2 (rebuilt), folder dataset/\n      type: CoProV2 (rebuilt), folder dataset/"
        in cards["me/sd15-safety-hate"]
    )
