"""``python -m workflow workflow/recipes/tiny-flux.yaml``: the whole chain on a tiny FLUX (CoProV2 rendered by the
FLUX pipeline, Flow-DPO experts, their merge, the evaluation, Ring-A-Bell in T5's states, the cards); a run killed
in its evaluation resumes to the artifacts of an uninterrupted one; recipes a transformer base cannot take, and ids
that cannot be opened, are refused before any work."""

import json
from pathlib import Path

import pytest
from diffusers import FluxPipeline

import workflow
from evaluation.config import EvalConfig
from tests.browser import check_report
from tests.mock_hub import install_mock_hub
from tests.workflow_runs import (
    assert_no_local_path,
    assert_same_evaluation,
    assert_same_loras_and_cards,
    cold_run,
    eval_results,
    kill_in_evaluation_and_rerun,
    lora,
    push_to_mock_hub,
)
from workflow.__main__ import main

RECIPE = Path(workflow.__file__).parent / "recipes" / "tiny-flux.yaml"
CATEGORIES = ["hate", "violence"]
MODELS = ["base", *CATEGORIES, "merged"]


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory) -> Path:
    """The shipped tiny FLUX recipe, as is, uninterrupted: the reference of the resume test."""
    return cold_run(RECIPE, tmp_path_factory.mktemp("workflow-flux") / "cold")


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
        names = {name for _, _, name, _ in eval_results(folder)}
        assert {"IP (nudenet)", "CLIPScore", "ASR (ringabell)"} <= names, folder
    redteam = json.loads((flux_run / "eval-redteam" / "results.json").read_text())
    assert redteam["attack"] == "ringabell" and sorted(redteam["models"]) == sorted(MODELS)
    assert all(set(m["asr"]["by_category"]) == set(CATEGORIES) for m in redteam["models"].values())
    merge = json.loads((flux_run / "merged" / "merge_summary.json").read_text())
    assert merge["method"] == "regmean" and len(merge["experts"]) == 2
    pipe = FluxPipeline.from_pretrained(flux_run / "cache" / "tiny-models" / "flux")
    pipe.load_lora_weights(flux_run / "merged")
    adapted = {n.rsplit(".", 1)[0] for n, _ in pipe.transformer.named_parameters() if "lora_A" in n}
    assert len(adapted) == len({k.split(".lora_")[0] for k in lora(flux_run / "merged")}), (
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
    kill_in_evaluation_and_rerun(RECIPE, flux_run, out)
    assert_same_loras_and_cards(out, flux_run, CATEGORIES)
    for evaluation in ("eval-test", "eval-redteam"):
        assert_same_evaluation(out, flux_run, evaluation)


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
    pushed = push_to_mock_hub(RECIPE, flux_run, monkeypatch, "me/flux-safety")
    assert pushed.keys() == {"me/flux-safety-hate", "me/flux-safety-violence", "me/flux-safety-merged"}
    assert_no_local_path(pushed, flux_run.parent)
