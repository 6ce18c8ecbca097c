"""``python -m workflow workflow/recipes/tiny-flux.yaml``: the whole chain on a tiny FLUX (CoProV2 rendered by the
FLUX pipeline, Flow-DPO experts, their merge, the evaluation, Ring-A-Bell in T5's states, the cards); a run killed
in its evaluation resumes to the artifacts of an uninterrupted one; recipes a transformer base cannot take, and ids
that cannot be opened, are refused before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import workflow
from evaluation.config import EvalConfig
from tests.browser import check_report
from tests.mock_hub import install_mock_hub
from workflow.__main__ import main

RECIPE = Path(workflow.__file__).parent / "recipes" / "tiny-flux.yaml"
CATEGORIES = ["hate", "violence"]
MODELS = ["base", *CATEGORIES, "merged"]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workflow", str(RECIPE), "--output_dir", str(out), "--no_progress", *extra]


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory) -> Path:
    """The shipped tiny FLUX recipe, as is, uninterrupted: the reference of the resume test."""
    out = tmp_path_factory.mktemp("workflow-flux") / "cold"
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
def test_the_tiny_flux_recipe_runs_the_whole_chain(flux_run):
    summary = json.loads((flux_run / "workflow" / "summary.json").read_text())
    assert list(summary) == ["dataset", *[f"experts/{c}" for c in CATEGORIES], "merge", "eval-test",
                             *[f"redteam/{c}" for c in CATEGORIES], "eval-redteam"]  # fmt: skip
    card = (flux_run / "coprov2" / "dataset" / "README.md").read_text()
    assert "`tiny:flux` rendered for both **from the same seed**" in card and "Images: `tiny:flux`" in card
    results = json.loads((flux_run / "eval-test" / "results.json").read_text())
    assert sorted(results["models"]) == sorted(MODELS)
    assert all({"ip", "clipscore"} <= set(m) for m in results["models"].values()), results["models"]
    for category in CATEGORIES:
        expert = (flux_run / "experts" / category / "README.md").read_text()
        assert (
            "| family | flux |" in expert
            and "| objective | flow-dpo |" in expert
            and "| beta | 1667 |" in expert
        )
        attacked = json.loads((flux_run / "redteam" / category / "attack" / "manifest.json").read_text())
        assert attacked["search"]["embeddings"].startswith(
            "FluxPipeline.encode_prompt's prompt_embeds (T5's token states, T5 length 512)"
        ), attacked["search"]
    for folder in [flux_run / "experts" / c for c in CATEGORIES] + [flux_run / "merged"]:
        names = {name for _, _, name, _ in _eval_results(folder)}
        assert {"IP (nudenet)", "CLIPScore", "ASR (ringabell)"} <= names, folder
    redteam = json.loads((flux_run / "eval-redteam" / "results.json").read_text())
    assert redteam["attack"] == "ringabell" and sorted(redteam["models"]) == sorted(MODELS)
    assert all(set(m["asr"]["by_category"]) == set(CATEGORIES) for m in redteam["models"].values())
    merge = json.loads((flux_run / "merged" / "merge_summary.json").read_text())
    assert merge["method"] == "regmean" and len(merge["experts"]) == 2
    pipe = FluxPipeline.from_pretrained(flux_run / "cache" / "tiny-models" / "flux")
    pipe.load_lora_weights(flux_run / "merged")
    adapted = {n.rsplit(".", 1)[0] for n, _ in pipe.transformer.named_parameters() if "lora_A" in n}
    assert len(adapted) == len({k.split(".lora_")[0] for k in _lora(flux_run / "merged")}), (
        "every merged layer loads"
    )
    for report in ("eval-test", "eval-redteam"):
        counts = check_report(flux_run / report / "report.html")
        assert counts["pages"] >= 2 and counts["images"] >= len(MODELS), (report, counts)


@pytest.mark.slow
def test_a_flux_run_killed_in_its_evaluation_resumes_to_the_artifacts_of_an_uninterrupted_one(
    flux_run, tmp_path
):
    out = tmp_path / "killed"
    command = _command(out, "--dataset", str(flux_run / "coprov2" / "dataset"))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "eval-test" / "render-hate").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the evaluation"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was interrupted"
    assert (out / "workflow" / "merge.json").is_file() and not (out / "workflow" / "eval-test.json").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "experts/hate: skipped, done before" in rerun.stdout and "eval-test: done" in rerun.stdout
    for name in [f"experts/{c}" for c in CATEGORIES] + ["merged"]:
        ours, reference = _lora(out / name), _lora(flux_run / name)
        assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours), name
        assert _eval_results(out / name) == _eval_results(flux_run / name), name
    for evaluation in ("eval-test", "eval-redteam"):
        images = sorted(p.relative_to(out) for p in (out / evaluation / "images").rglob("*.png"))
        assert images and images == sorted(
            p.relative_to(flux_run) for p in (flux_run / evaluation / "images").rglob("*.png")
        )
        assert all((out / p).read_bytes() == (flux_run / p).read_bytes() for p in images), evaluation

        def metrics(root: Path, name: str = evaluation) -> dict:
            models = json.loads((root / name / "results.json").read_text())["models"]
            return {label: {k: v for k, v in m.items() if k != "lora"} for label, m in models.items()}

        assert metrics(out) == metrics(flux_run), evaluation


def test_recipes_a_transformer_base_cannot_take_and_ids_that_cannot_be_opened_are_refused_upfront(
    tmp_path, capsys, monkeypatch
):
    """One line each, exit 2, before any step and with nothing written: a UNet's ``attn2`` targets, a size FLUX's
    2x2 packing cannot make (training, evaluation, the build's renderer), a flow option on a UNet base, and ids the
    (mock) Hub says are missing or gated."""
    hub = install_mock_hub(monkeypatch)
    hub.access = {"me/gated-set": "gated", EvalConfig.clip_model: "ok", EvalConfig.q16_clip_model: "ok"}
    data = tmp_path / "data"
    data.mkdir()
    cases = {
        f"base: tiny:flux\ndataset: {data}\ndpo: {{target_modules: [attn2.to_k, attn2.to_v]}}\n":
            "error: dpo: --target_modules attn2.to_k attn2.to_v: no module of",
        f"base: tiny:flux\ndataset: {data}\ndpo: {{resolution: 34}}\n":
            "error: dpo: resolution 34 does not fit base model",
        f"base: tiny:flux\ndataset: {data}\nevaluation: {{height: 30}}\n":
            "error: evaluation: --height 30: resolution 30 does not fit",
        "base: tiny:flux\nbuild: {preset: smoke, t2i_model: tiny:flux, t2i_width: 34}\n":
            "error: build: --t2i_width 34: resolution 34 does not fit",
        f"base: tiny:sd15\ndataset: {data}\ndpo: {{max_sequence_length: 77}}\n":
            "error: dpo: --max_sequence_length is for rectified-flow bases (SD3, FLUX.1)",
        f"base: nobody/no-such-model\ndataset: {data}\n":
            "error: base nobody/no-such-model: no such model repo on the Hub, or a private one",
        "base: tiny:flux\ndataset: me/gated-set\n":
            "error: dataset me/gated-set: a gated repo this account cannot read yet; request access on "
            "https://huggingface.co/datasets/me/gated-set",
    }  # fmt: skip
    for text, message in cases.items():
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text)
        assert main([str(recipe), "--output_dir", str(tmp_path / "out")]) == 2, text
        error = (
            capsys.readouterr().err
        )  # a tiny base written to scratch shows its progress bars before the line
        lines = [line for line in error.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and lines[0].startswith(message) and "Traceback" not in error, (
            text,
            error[-800:],
        )
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.slow
def test_pushed_cards_and_files_hold_no_local_path_and_name_their_repo(flux_run, monkeypatch):
    """The finished run pushed to the (mock) Hub, as ``--push_experts``/``--push_merged`` push it: every step is
    skipped but the push; no uploaded file (cards, model-index, summaries, metrics) holds the run's absolute
    folder, and each card's usage snippet loads the repo it went to."""
    from workflow.config import load_recipe
    from workflow.run import run_workflow

    hub = install_mock_hub(monkeypatch)
    config = load_recipe(RECIPE, output_dir=str(flux_run), push_experts="me/flux-safety-{category}",
                         push_merged="me/flux-safety-merged", progress=False)  # fmt: skip
    records = run_workflow(config)
    assert [name for name, r in records.items() if not r.get("skipped")] == ["push"], records
    uploads = [(repo.removeprefix("/api/models/"), path, content) for repo, path, content in hub.uploads]
    assert {repo for repo, _, _ in uploads} == {"me/flux-safety-hate", "me/flux-safety-violence",
                                               "me/flux-safety-merged"}  # fmt: skip
    folder = str(flux_run.parent).encode()
    leaks = [(repo, path) for repo, path, content in uploads if folder in content]
    assert not leaks, leaks
    cards = {repo: content.decode() for repo, path, content in uploads if path == "README.md"}
    assert len(cards) == 3 and all(f'load_lora_weights("{repo}")' in card for repo, card in cards.items())
