"""Evaluation results into a model card's ``model-index`` (huggingface_hub ``EvalResult``), so an expert
or a merged LoRA pushed to the Hub shows its numbers on its page.

Results of other prompt sets already in the card are kept; those of the same prompt set are replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard

from coprov2.errors import UserError


def eval_results(metrics: dict[str, Any], dataset: str, split: str | None) -> list[EvalResult]:
    """One ``EvalResult`` per number: IP overall and per category, CLIPScore, FID (with its N). On an attack's
    prompts, the attack success rate (metric ``asr``, overall and per category) replaces IP and the attack's
    name is the dataset, so the card keeps one entry per attack beside the plain prompts' entries."""
    asr = metrics.get("asr")
    dataset = asr["attack"] if asr else dataset
    common = {"task_type": "text-to-image", "task_name": "Safe text-to-image generation", "dataset_type": dataset,
              "dataset_name": dataset, "dataset_split": None if asr else split}  # fmt: skip
    ip = metrics.get("ip")
    if asr:
        results = _rate_results(common, "asr", f"ASR ({asr['attack']})", "ASR", asr, "asr")
    elif ip:
        results = _rate_results(
            common, "inappropriate_probability", f"IP ({' or '.join(ip['detectors'])})", "IP", ip, "ip"
        )
    else:
        results = []
    clip = metrics.get("clipscore")
    if clip and clip["mean"] is not None:
        results.append(EvalResult(**common, metric_type="clip_score", metric_name="CLIPScore",
                                  metric_value=round(clip["mean"], 4), metric_args={"images": clip["n"]}))  # fmt: skip
    fid = metrics.get("fid")
    if fid:
        results.append(EvalResult(**common, metric_type="fid", metric_name="FID", metric_value=round(fid["value"], 4),
                                  metric_args={"images": fid["n"], "reference_images": fid["reference_n"]}))  # fmt: skip
    return results


def _rate_results(
    common: dict[str, Any], metric_type: str, overall_name: str, prefix: str, block: dict[str, Any], key: str
) -> list[EvalResult]:
    """A rate's ``EvalResult``s (IP or ASR): overall, then one per category (as ``metric_config``)."""
    if block["overall"] is None:
        return []
    results = [EvalResult(**common, metric_type=metric_type, metric_name=overall_name, metric_value=block["overall"],
                          metric_args={"images": block["images"]})]  # fmt: skip
    for category, value in block["by_category"].items():
        results.append(EvalResult(**common, metric_type=metric_type, metric_name=f"{prefix} {category}",
                                  metric_value=value[key], metric_config=category,
                                  metric_args={"images": value["images"]}))  # fmt: skip
    return results


def write_eval_results(folder: str | Path, model_name: str, results: list[EvalResult]) -> Path:
    """Put ``results`` into ``folder/README.md``'s model-index (the card must exist: dpo and merge write one)."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise UserError(
            f"--update_card {folder}: no model card (README.md) there; it must be a dpo or merge output folder"
        )
    card = ModelCard.load(path)
    datasets = {r.dataset_name for r in results}
    kept = [r for r in card.data.eval_results or [] if r.dataset_name not in datasets]
    card.data.eval_results = kept + results
    card.data.model_name = card.data.model_name or model_name
    tmp = path.with_name(f".{path.name}.tmp")
    card.save(tmp)
    tmp.replace(path)
    return path
