"""``python -m workflow``: the shipped tiny recipe runs the whole chain offline (build -> 7 experts -> merge ->
evaluation -> cards); a run killed part-way and rerun ends with the same artifacts as an uninterrupted one;
the reports open in a real browser; bad recipes fail before any work."""

import json
import subprocess
from pathlib import Path

import pytest

import workflow
from tests.browser import check_report
from tests.workflow_runs import (
    assert_no_local_path,
    assert_same_evaluation,
    assert_same_loras_and_cards,
    command,
    eval_results,
    kill_in_evaluation_and_rerun,
    lora,
    push_to_mock_hub,
)
from tests.workflow_runs import cold_run as run_recipe
from workflow.__main__ import main

RECIPE = Path(workflow.__file__).parent / "recipes" / "tiny.yaml"
CATEGORIES = ["harassment", "hate", "illegal-activity", "self-harm", "sexual", "shocking", "violence"]


def _command(out: Path, *extra: str) -> list[str]:
    return command(RECIPE, out, *extra)


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory) -> Path:
    """The shipped tiny recipe, as is, uninterrupted: the reference of the resume test."""
    return run_recipe(RECIPE, tmp_path_factory.mktemp("workflow") / "cold")


@pytest.mark.slow
def test_the_tiny_recipe_runs_the_whole_chain(cold_run):
    summary = json.loads((cold_run / "workflow" / "summary.json").read_text())
    assert list(summary) == ["dataset", *[f"experts/{c}" for c in CATEGORIES], "merge", "route", "eval-test",
                             *[f"redteam/{c}" for c in CATEGORIES], "eval-redteam"]  # fmt: skip
    assert summary["dataset"]["summary"]["rows"] > 0
    results = json.loads((cold_run / "eval-test" / "results.json").read_text())
    assert sorted(results["models"]) == sorted(["base", *CATEGORIES, "merged", "routed"])
    # the routed model: every expert as an adapter, each image's route recorded, the router's accuracy reported
    routing = results["models"]["routed"]["router"]
    assert set(routing["categories"]) == set(CATEGORIES)
    assert (
        sum(m["prompts"] for m in routing["categories"].values())
        == results["models"]["routed"]["ip"]["images"]
    )
    assert "Router of 'routed'" in (cold_run / "eval-test" / "results.md").read_text()
    router = json.loads((cold_run / "router" / "router_summary.json").read_text())
    assert router["categories"] == CATEGORIES and (cold_run / "router" / "model.safetensors").is_file()
    assert "Concept router for" in (cold_run / "router" / "README.md").read_text()
    names = {
        name for _, _, name, _ in eval_results(cold_run / "router")
    }  # the routed model's results, on its card
    assert {"IP (nudenet)", "CLIPScore", "ASR (ringabell)"} <= names
    assert results["prompt_set"]["source"] == str(cold_run / "coprov2" / "dataset")
    for folder in [cold_run / "experts" / c for c in CATEGORIES] + [cold_run / "merged"]:
        assert lora(folder), folder
        names = {name for _, _, name, _ in eval_results(folder)}
        assert {"IP (nudenet)", "CLIPScore", "ASR (ringabell)"} <= names, folder
    assert (cold_run / "eval-test" / "report.html").is_file()
    redteam = json.loads((cold_run / "eval-redteam" / "results.json").read_text())
    assert redteam["attack"] == "ringabell" and sorted(redteam["models"]) == sorted(
        ["base", *CATEGORIES, "merged", "routed"]
    )
    assert all(set(m["asr"]["by_category"]) == set(CATEGORIES) for m in redteam["models"].values())
    assert "ASR overall (%)" in (cold_run / "eval-redteam" / "report.html").read_text()
    merge = json.loads((cold_run / "merged" / "merge_summary.json").read_text())
    assert merge["method"] == "regmean" and len(merge["experts"]) == 7


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_artifacts_of_an_uninterrupted_one(cold_run, tmp_path):
    out = tmp_path / "killed"
    # the same dataset as the cold run (its build has its own kill tests): experts, merge and evaluation are compared:
    # every expert's and the merge's LoRA tensors, every rendered image byte for byte, every model's metrics, and
    # the model-index each card carries
    kill_in_evaluation_and_rerun(RECIPE, cold_run, out)
    assert_same_loras_and_cards(out, cold_run, CATEGORIES)
    assert assert_same_evaluation(out, cold_run) == 10 * 3  # base, 7 experts, merged, routed
    again = subprocess.run(
        _command(out, "--dataset", str(cold_run / "coprov2" / "dataset")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        again.returncode == 0 and again.stdout.count("skipped, done before") == 2 * len(CATEGORIES) + 4
    )  # all but the given dataset: the experts, the merge, the router, eval-test, an attack per category, eval-redteam


@pytest.mark.slow
def test_the_reports_open_in_a_browser(cold_run, tmp_path):
    from evaluation.gallery import main as gallery_main

    counts = check_report(cold_run / "eval-test" / "report.html")
    assert counts["pages"] >= 2 and counts["images"] >= 10 * 3
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
    pushed = push_to_mock_hub(RECIPE, cold_run, monkeypatch, "me/sd15-safety", router=True)
    assert pushed.keys() == {f"me/sd15-safety-{c}" for c in [*CATEGORIES, "merged", "router"]}
    assert {"model.safetensors", "config.json", "router_summary.json"} <= pushed[
        "me/sd15-safety-router"
    ].keys()
    assert_no_local_path(pushed, cold_run.parent)
    assert (
        "      name: CoProV2 (rebuilt), folder dataset/\n      type: CoProV2 (rebuilt), folder dataset/"
        in pushed["me/sd15-safety-hate"]["README.md"].decode()
    )
