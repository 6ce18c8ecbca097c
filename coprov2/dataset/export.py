"""Export the gated pairs as a Hub-ready dataset folder that ``datasets.load_dataset(folder)`` opens.

Layout: ``data/<category>/{train,test}-00000-of-00001.parquet`` with the images embedded
(``datasets.Image`` columns), and ``README.md`` whose YAML ``configs:`` declares ``all`` (default)
and one config per category. Splits are by concept: per category, a seeded hash order of its
concepts puts ``test_ratio`` of them in test, so test concepts are unseen in train. The folder is
written beside the target and swapped in whole, so an interrupted export leaves the old one (or none).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Features, Image, Value

from cards.dataset_card import coprov2_dataset_card
from coprov2.dataset.info import dataset_infos
from coprov2.dataset.release_layout import RELEASE_FOLDER_NAME, export_release_layout
from coprov2.gate.clip_scores import SCORE_NAMES
from coprov2.gate.stage import gate_stage_dir
from coprov2.images.stage import images_stage_dir, read_image_rows
from coprov2.prompts.stage import prompts_stage_dir
from coprov2.seeds import derive_seed
from coprov2.stage_io import read_jsonl, staging_folder, swap_in

if TYPE_CHECKING:
    from coprov2.config import BuildConfig

SPLITS = ("train", "test")
FEATURES = Features(
    {
        "id": Value("string"),
        "category": Value("string"),
        "concept": Value("string"),
        "unsafe_prompt": Value("string"),
        "safe_prompt": Value("string"),
        "seed": Value("int64"),
        "unsafe_image": Image(),
        "safe_image": Image(),
        **{name: Value("float32") for name in SCORE_NAMES},
        "width": Value("int32"),
        "height": Value("int32"),
        "t2i_model": Value("string"),
        "clip_model": Value("string"),
    }
)


@dataclass
class DatasetConfig:
    """The exported dataset."""

    test_ratio: float = field(
        default=0.25, metadata={"help": "share of each category's concepts held out as test"}
    )
    dataset_license: str = field(default="cc-by-nc-4.0", metadata={"help": "license in the dataset card"})
    release_layout: bool = field(
        default=True,
        metadata={
            "help": "also write the SafetyDPO release layout (images + CSVs its train.py reads) "
            "to <output_dir>/release_pickapic_formatted"
        },
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "after export, push the dataset to this Hub repo (created private, gated)"},
    )
    hub_gated: str = field(
        default="manual", metadata={"help": "gate approval: manual or auto", "choices": ("manual", "auto")}
    )
    hub_public: bool = field(
        default=False, metadata={"help": "make the repo public (still gated); default private"}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "print the Hub calls and files instead of pushing"}
    )


class EmptyDatasetError(RuntimeError):
    """Every pair was rejected: there is nothing to export (and nothing must be pushed)."""


def held_out_concepts(concepts: dict[str, list[str]], ratio: float, seed: int) -> set[tuple[str, str]]:
    """(category, concept) pairs held out: per category ``ceil(ratio * n)``, at least one train concept left."""
    if not 0 <= ratio < 1:
        raise ValueError(f"test_ratio must be within [0, 1), got {ratio}")
    held_out = set()
    for category, names in concepts.items():
        ordered = sorted(set(names), key=lambda name: derive_seed(seed, "split", category, name))
        n_test = min(math.ceil(ratio * len(ordered)), len(ordered) - 1)
        held_out.update((category, name) for name in ordered[:n_test])
    return held_out


def _configs(files: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    def entry(name: str, pattern: str, splits: list[str]) -> dict[str, Any]:
        return {
            "config_name": name,
            "data_files": [{"split": s, "path": pattern.format(split=s)} for s in splits],
        }

    splits_all = [s for s in SPLITS if any(split == s for _, split in files)]
    configs = [{**entry("all", "data/*/{split}-*.parquet", splits_all), "default": True}]
    for category in sorted({category for category, _ in files}):
        splits = [s for s in SPLITS if (category, s) in files]
        configs.append(entry(category, f"data/{category}/{{split}}-*.parquet", splits))
    return configs


def export_dataset(config: BuildConfig) -> dict[str, Any]:
    """Write ``<output_dir>/dataset`` from finished images and gate stages; returns the card's summary."""
    images, gate = images_stage_dir(config), gate_stage_dir(config)
    scores = {record["id"]: record for record in gate.read_records()}  # raises if the gate is unfinished
    decisions = {d["id"]: d for d in read_jsonl(gate.dir / "decisions.jsonl")}
    gate_manifest = gate.read_manifest()
    kept: list[dict[str, Any]] = []
    for index in range(config.num_shards):
        for row in read_image_rows(images, index):
            if decisions[row["id"]]["passed"]:
                kept.append(row)
    if not kept:
        raise EmptyDatasetError(
            f"every one of the {len(decisions)} pairs was rejected by the gate ({gate_manifest['gate']['reasons']}); "
            "nothing to export. Loosen --gate_min_score / --gate_percentile, or check the models."
        )
    concepts: dict[str, list[str]] = defaultdict(list)
    for row in kept:
        concepts[row["category"]].append(row["concept"])
    held_out = held_out_concepts(concepts, config.test_ratio, config.seed)

    tables: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(kept, key=lambda r: (r["category"], r["concept"], r["id"])):
        split = "test" if (row["category"], row["concept"]) in held_out else "train"
        tables[(row["category"], split)].append(
            {
                **{
                    key: row[key]
                    for key in ("id", "category", "concept", "unsafe_prompt", "safe_prompt", "seed")
                },
                "unsafe_image": {"bytes": row["unsafe_image"], "path": None},
                "safe_image": {"bytes": row["safe_image"], "path": None},
                **{name: scores[row["id"]][name] for name in SCORE_NAMES},
                "width": row["width"],
                "height": row["height"],
                "t2i_model": config.t2i_model,
                "clip_model": config.clip_model,
            }
        )

    target = Path(config.output_dir) / "dataset"
    staging = staging_folder(target)
    files = {}
    for (category, split), rows in sorted(tables.items()):
        path = staging / "data" / category / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(path))
        files[(category, split)] = str(path.relative_to(staging))

    summary = _summary(config, tables, gate_manifest)
    summary["configs"] = _configs(files)
    summary["dataset_info"] = dataset_infos(staging, summary["configs"])
    coprov2_dataset_card(summary, config.dataset_license).save(staging / "README.md")
    swap_in(staging, target)
    if config.release_layout:
        export_release_layout(target, Path(config.output_dir) / RELEASE_FOLDER_NAME)
    return summary


def _summary(config: BuildConfig, tables, gate_manifest: dict[str, Any]) -> dict[str, Any]:
    prompts_manifest = prompts_stage_dir(config).read_manifest()
    counts = {(category, split): len(rows) for (category, split), rows in tables.items()}
    categories = sorted({category for category, _ in counts})
    split_rows = [
        {"config": "all", **{s: sum(n for (_, split), n in counts.items() if split == s) for s in SPLITS}}
    ] + [{"config": c, **{s: counts.get((c, s), 0) for s in SPLITS}} for c in categories]
    rejection_rows = [
        {"stage": "prompts", "reason": reason, "count": count}
        for reason, count in prompts_manifest["stats"].get("rejected", {}).items()
    ] + [
        {"stage": "gate", "reason": reason, "count": count}
        for reason, count in gate_manifest["gate"]["reasons"].items()
    ]
    prompts_config = prompts_manifest["config"]
    gate = gate_manifest["gate"]
    return {
        "rows_total": sum(counts.values()),
        "split_rows": split_rows,
        "rejection_rows": rejection_rows,
        "test_ratio_percent": round(100 * config.test_ratio),
        "concepts_total": sum(prompts_manifest["taxonomy_concepts"].values()),
        "categories_total": len(prompts_manifest["taxonomy_concepts"]),
        "llm_model": prompts_manifest["llm_model"],
        "prompts_per_concept": prompts_config["prompts_per_concept"],
        "seed": config.seed,
        "templates": ", ".join(
            f"{name} {digest}" for name, digest in sorted(prompts_config["templates"].items())
        ),
        "t2i_model": config.t2i_model,
        "steps": config.t2i_steps,
        "guidance": config.t2i_guidance,
        "clip_model": config.clip_model,
        "threshold": round(gate["threshold_applied"], 4),
        "min_score": gate["min_score"],
        "percentile": gate["percentile"],
        "require_own_closer": gate["require_own_closer"],
        "rejections_by_reason": {f"{r['stage']}/{r['reason']}": r["count"] for r in rejection_rows},
    }
