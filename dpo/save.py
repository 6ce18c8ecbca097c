"""Write a trained expert: diffusers-format LoRA weights, its card, a summary; push when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diffusers
from diffusers import DiffusionPipeline

from cards.licence import base_licence
from cards.model_card import lora_model_card
from cards.public import public_name, public_settings
from cards.push import push_folder
from coprov2.canonical import canonicalize
from dpo.families import family_of

if TYPE_CHECKING:
    from dpo.trainer import TrainingInputs

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def pipeline_class(base: str, revision: str | None = None) -> type:
    """The diffusers pipeline class of ``base`` (its ``save_lora_weights`` writes the right key layout)."""
    return getattr(diffusers, DiffusionPipeline.load_config(base, revision=revision)["_class_name"])


def save_lora(model, base: str, folder: Path, revision: str | None = None) -> Path:
    """``model``'s adapter (the base's UNet or transformer) as ``pytorch_lora_weights.safetensors`` that
    ``pipe.load_lora_weights`` loads, in the layout of the base's pipeline class.

    The peft config goes in as metadata: without it the loader assumes ``lora_alpha == r``.
    """
    family = family_of(base, revision)
    metadata = model.peft_config["default"].to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: its order varies per process
    family.save_lora_weights(pipeline_class(base, revision), folder, family.lora_layers(model), metadata)
    canonicalize(folder / LORA_WEIGHTS)
    return folder / LORA_WEIGHTS


def save_expert(model, inputs: TrainingInputs, category: str, folder: Path, metrics: dict[str, Any]) -> None:
    """The expert's LoRA, its model card (family, objective, beta, targets and every setting) and a summary."""
    config, family, rows = inputs.config, inputs.family, len(inputs.rows)
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(model, inputs.base, folder, config.revision)
    base_name = config.base
    settings = {
        **config.hyperparameters(),
        "family": family.name,
        "objective": family.objective,
        **family.settings(),
        "category": category,
        "resolution": inputs.resolution,
        "training pairs": rows,
    }
    repo = config.push_to_hub and (
        config.push_to_hub if config.category != "each" else f"{config.push_to_hub}-{category}"
    )
    card = lora_model_card(
        title=f"Safety expert: {category}"
        if category != "all"
        else "Safety expert: all categories (All-single)",
        summary=(
            f"A {family.objective_title} LoRA for `{base_name}` trained on {rows} CoProV2 pairs of category `{category}` "
            f"from {public_name(inputs.pairs.source)}: for each unsafe prompt, the safe image is preferred over the unsafe one."
        ),
        method=family.method,
        base_model=base_name,
        settings=settings,
        measured=metrics,
        tags=[family.objective, f"category-{category}"],
        datasets=[config.dataset] if "/" in config.dataset and not Path(config.dataset).exists() else None,
        repo_or_folder=repo,
        licence=base_licence(base_name, inputs.base),
    )
    card.save(folder / "README.md")
    summary = {"category": category, "base": public_name(base_name), "metrics": metrics,
               "settings": public_settings(settings)}  # fmt: skip
    (folder / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if repo:
        push_folder(
            folder,
            repo,
            repo_type="model",
            gated=None,
            public=config.hub_public,
            dry_run=config.dry_run,
            ignore=("checkpoints",),
        )
