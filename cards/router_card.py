"""The card of a concept router (``merge.router``): what it was trained on and how well it routes."""

from __future__ import annotations

import math
import re
from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from cards.licence import base_licence
from cards.public import USAGE_PLACEHOLDER, public_name

TEMPLATE = "templates/router.md"


def _rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def router_card(config: Any, summary: dict[str, Any]) -> ModelCard:
    """The card of the router ``config`` (``RouterConfig``) trained, from its ``summary`` (``router_summary.json``);
    no local path is published (``cards.public``)."""
    licence = base_licence(config.base)
    dataset = public_name(config.dataset)
    card_data = ModelCardData(
        base_model=public_name(config.base), datasets=[dataset] if re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) else None,
        library_name="alignguard", license=licence.license, license_name=licence.name,
        license_link=licence.link, pipeline_tag="text-classification",
        tags=["alignguard", "safety", "router", "prompt-guard", "text-to-image"],
    )  # fmt: skip
    test, calibration = summary["test"], summary["calibration"]
    rows = [
        {
            "category": c,
            "threshold": f"{summary['thresholds'][c]:.3f}",
            "precision": _rate(test["categories"][c]["precision"]),
            "recall": _rate(test["categories"][c]["recall"]),
            "prompts": test["categories"][c]["prompts"],
            "calibration_recall": _rate(calibration["categories"][c]["recall"]),
        }
        for c in summary["categories"]
    ]
    prompts = summary["prompts"]
    rates = {
        f"neutral prompts held out of training and calibration ({test['neutral_prompts']}), false-positive rate":
            _rate(test["neutral_false_positive_rate"]),
        f"safe twins of the test split ({test['safe_twin_prompts']}), false-positive rate":
            _rate(test["safe_twin_false_positive_rate"]),
    }  # fmt: skip
    if summary.get("in_sample_thresholds"):
        rates["categories of one distinct training prompt, their threshold set on it (not held out)"] = (
            ", ".join(summary["in_sample_thresholds"])
        )
    if summary["head"] == "prototype":
        fit = (
            "each concept's centroid of its unsafe prompts; a prompt's score for a category is its cosine to the "
            "category's nearest concept centroid, so a prompt far from every concept gets no category"
        )
    elif summary["head"] == "contrastive":
        fit = (
            "a learned embedding (a projection of the features and one row per concept, plus one for no concept, "
            "trained with InfoNCE: each unsafe prompt toward its concept, safe twins and neutral prompts toward no "
            "concept); a prompt's score for a category is its cosine to the category's nearest concept row"
        )
    else:
        fit = (
            "a one-vs-rest classifier per category: its unsafe prompts are the positives; their safe twins, the other "
            "categories' prompts and neutral prompts the negatives"
        )
    method = (
        f"A {summary['head']} head on the base's frozen text features ({summary['family']} family: the token "
        f"states its denoiser reads, averaged over the prompt's own tokens, width {summary['feature_dim']}, "
        f"standardised), learned from {dataset}'s train split ({prompts['train']} prompts): {fit}. Each category's "
        f"threshold is the best F1 on {prompts['calibration']} held-out prompts. A prompt is routed to every "
        "category whose score reaches its threshold, and gets those categories' experts at weight 1 (none: the "
        "base alone)."
    )
    unused = (
        {"hidden_size", "steps", "learning_rate", "weight_decay"} if summary["head"] == "prototype" else set()
    )
    if summary["head"] == "linear":
        unused.add("hidden_size")
    settings = {
        k: ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in summary["settings"].items()
        if v not in (None, [], "") and k not in unused
    }
    template = (resources.files("cards") / TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data, template_str=template, title=f"Concept router for {public_name(config.base)}",
        summary="Routes each prompt to the safety experts of the categories it belongs to: "
        + ", ".join(f"`{c}`" for c in summary["categories"]) + ".",
        method=method, base_model=public_name(config.base), repo_or_folder=config.push_to_hub or USAGE_PLACEHOLDER,
        categories=summary["categories"], categories_table=rows, rates=rates,
        settings=settings,
    )  # fmt: skip
