"""The CoProV2 dataset card: YAML metadata (configs, gating, license) and a body rendered from the
build's manifests, so that every number in it comes from the data, none typed by hand."""

from __future__ import annotations

from importlib import resources
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

TEMPLATE = "templates/coprov2_dataset.md"
RELEASE_TEMPLATE = "templates/coprov2_release.md"


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def _gated_card_data(summary: dict[str, Any], license: str, pretty_name: str) -> DatasetCardData:
    return DatasetCardData(
        license=license,
        task_categories=["text-to-image"],
        language=["en"],
        tags=["safety", "alignment", "preference", "diffusion-dpo", "not-for-all-audiences"],
        size_categories=[size_category(summary["rows_total"])],
        pretty_name=pretty_name,
        configs=summary["configs"],
        dataset_info=summary["dataset_info"],
        extra_gated_prompt=(
            "This dataset contains unsafe prompts and images (hate, harassment, violence, self-harm, sexual, "
            "shocking, illegal activity). It is shared for safety research only."
        ),
        extra_gated_fields={
            "Affiliation": "text",
            "I will use this dataset for safety research only": "checkbox",
        },
    )


def _render(card_data: DatasetCardData, template_name: str, **values: Any) -> DatasetCard:
    template = (resources.files("cards") / template_name).read_text(encoding="utf-8")
    return DatasetCard.from_template(card_data, template_str=template, **values)


def coprov2_dataset_card(summary: dict[str, Any], license: str = "cc-by-nc-4.0") -> DatasetCard:
    """``summary``: what :func:`coprov2.dataset.export.export_dataset` measured (configs, counts, build info)."""
    name = "CoProV2 (rebuilt)"
    return _render(_gated_card_data(summary, license, name), TEMPLATE, pretty_name=name, **summary)


def release_dataset_card(summary: dict[str, Any], license: str = "cc-by-nc-4.0") -> DatasetCard:
    """``summary``: what :func:`coprov2.dataset.from_release.import_release` read (counts, files, skipped rows)."""
    name = "CoProV2 (SafetyDPO release, converted)"
    return _render(_gated_card_data(summary, license, name), RELEASE_TEMPLATE, pretty_name=name, **summary)
