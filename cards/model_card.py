"""Model cards for LoRA artifacts (safety experts from ``dpo/``, merged LoRAs from ``merge/``).

Every value in the card comes from the run that made the artifact: its config and what it measured.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from cards.licence import Licence, base_licence
from cards.public import USAGE_PLACEHOLDER, public_name, public_settings

TEMPLATE = "templates/lora.md"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def lora_model_card(
    *,
    title: str,
    summary: str,
    method: str,
    base_model: str,
    settings: dict[str, Any],
    measured: dict[str, Any],
    tags: list[str],
    datasets: list[str] | None = None,
    repo_or_folder: str | None = None,
    expectations: str | None = None,
    licence: Licence | None = None,
) -> ModelCard:
    """The card of one LoRA; ``expectations`` (markdown) says what our benchmarks found about artifacts of its kind;
    ``licence``: the base's (default: :func:`cards.licence.base_licence` of ``base_model``), which a LoRA carries.
    ``repo_or_folder``: the Hub repo the usage snippet loads (None: a placeholder ``cards.push`` fills in when the
    folder is pushed). No local path is published: settings and the base are named by ``cards.public``."""
    licence = licence or base_licence(base_model)
    base_model = public_name(base_model)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        library_name="diffusers",
        license=licence.license,
        license_name=licence.name,
        license_link=licence.link,
        pipeline_tag="text-to-image",
        tags=["lora", "diffusers", "safety", "alignguard", *tags],
    )
    template = (resources.files("cards") / TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        title=title,
        summary=summary,
        method=method,
        base_model=base_model,
        settings={k: _format(v) for k, v in public_settings(settings).items()},
        measured={k: _format(v) for k, v in measured.items()},
        repo_or_folder=repo_or_folder or USAGE_PLACEHOLDER,
        expectations=expectations,
    )
