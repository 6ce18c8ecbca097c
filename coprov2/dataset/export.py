"""Export the gated pairs as a Hub-ready dataset folder that ``datasets.load_dataset(folder)`` opens.

Layout: ``data/<category>/{train,test}-<k>-of-<n>.parquet`` files of at most ``max_shard_size``
each, with the images embedded (``datasets.Image`` columns), and ``README.md`` whose YAML ``configs:`` declares ``all`` (default)
and one config per category. Splits are by concept: per category, a seeded hash order of its
concepts puts ``test_ratio`` of them in test, so test concepts are unseen in train. The folder is
written beside the target and swapped in whole, so an interrupted export leaves the old one (or none).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from datasets import Features, Image, Value
from datasets.utils.py_utils import convert_file_size_to_int

from cards.dataset_card import coprov2_dataset_card
from coprov2.dataset.config import DatasetConfig
from coprov2.dataset.info import dataset_infos
from coprov2.dataset.parquet_writer import ShardedParquetWriter
from coprov2.dataset.release_layout import RELEASE_FOLDER_NAME, export_release_layout
from coprov2.errors import UserError
from coprov2.gate.clip_scores import SCORE_NAMES
from coprov2.prompts.similarity import distribution, token_jaccard, word_sequence_ratio
from coprov2.seeds import derive_seed
from coprov2.stage_io import StageDir, read_jsonl, staging_folder, swap_in

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: Per pair, how close the safe twin stays to the unsafe prompt (``coprov2.prompts.similarity``).
SIMILARITY_NAMES = ("prompt_similarity", "prompt_jaccard")
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
        **{name: Value("float32") for name in SIMILARITY_NAMES},
        "width": Value("int32"),
        "height": Value("int32"),
        "t2i_model": Value("string"),
        "clip_model": Value("string"),
    }
)


class EmptyDatasetError(UserError):
    """Every pair was rejected: there is nothing to export (and nothing must be pushed)."""


def held_out_concepts(concepts: dict[str, list[str]], ratio: float, seed: int) -> set[tuple[str, str]]:
    """(category, concept) pairs held out: per category ``ceil(ratio * n)``, at least one train concept left."""
    if not 0 <= ratio < 1:
        raise UserError(f"test_ratio must be within [0, 1), got {ratio}")
    held_out = set()
    for category, names in concepts.items():
        ordered = sorted(set(names), key=lambda name: derive_seed(seed, "split", category, name))
        n_test = min(math.ceil(ratio * len(ordered)), len(ordered) - 1)
        held_out.update((category, name) for name in ordered[:n_test])
    return held_out


def split_rows(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    """The card's table: rows per split for config ``all``, then for each category."""
    categories = sorted({category for category, _ in counts})
    return [
        {"config": "all", **{s: sum(n for (_, split), n in counts.items() if split == s) for s in SPLITS}}
    ] + [{"config": c, **{s: counts.get((c, s), 0) for s in SPLITS}} for c in categories]


def configs_for(files: dict[tuple[str, str], list[Path]]) -> list[dict[str, Any]]:
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


def export_dataset(config: DatasetConfig, root: str | Path) -> dict[str, Any]:
    """Write ``<root>/dataset`` from finished images and gate stages; returns the card's summary.

    Streams: the gate's score records (text) are read whole, the images shard by shard, a few rows
    at a time, each kept row going to its (category, split) writer; no image is held longer than
    its row group.
    """
    root = Path(root)
    images, gate = StageDir.finished(root, "images"), StageDir.finished(root, "gate")
    scores = {record["id"]: record for record in gate.read_records()}
    passed = {d["id"] for d in read_jsonl(gate.dir / "decisions.jsonl") if d["passed"]}
    gate_manifest = gate.read_manifest()
    if not passed:
        raise EmptyDatasetError(
            f"every one of the {len(scores)} pairs was rejected by the gate ({gate_manifest['gate']['reasons']}); "
            "nothing to export. Loosen --gate_min_score / --gate_percentile, or check the models."
        )
    concepts: dict[str, list[str]] = defaultdict(list)
    for pair_id in passed:
        concepts[scores[pair_id]["category"]].append(scores[pair_id]["concept"])
    held_out = held_out_concepts(concepts, config.test_ratio, config.seed)
    images_manifest = images.read_manifest()
    t2i_model, clip_model = images_manifest["t2i_model"], gate_manifest["clip_model"]
    max_bytes = convert_file_size_to_int(config.max_shard_size)

    target = root / "dataset"
    staging = staging_folder(target)
    writers: dict[tuple[str, str], ShardedParquetWriter] = {}
    similarities: list[float] = []
    for index in range(images.num_shards):
        for row in images.iter_shard(index, batch_size=16):
            if row["id"] not in passed:
                continue
            split = "test" if (row["category"], row["concept"]) in held_out else "train"
            key = (row["category"], split)
            if key not in writers:
                folder = staging / "data" / row["category"]
                writers[key] = ShardedParquetWriter(folder, split, FEATURES.arrow_schema, max_bytes)
            similarities.append(word_sequence_ratio(row["unsafe_prompt"], row["safe_prompt"]))
            writers[key].write(
                {
                    **{
                        k: row[k]
                        for k in ("id", "category", "concept", "unsafe_prompt", "safe_prompt", "seed")
                    },
                    "unsafe_image": {"bytes": row["unsafe_image"], "path": None},
                    "safe_image": {"bytes": row["safe_image"], "path": None},
                    **{name: scores[row["id"]][name] for name in SCORE_NAMES},
                    "prompt_similarity": similarities[-1],
                    "prompt_jaccard": token_jaccard(row["unsafe_prompt"], row["safe_prompt"]),
                    "width": row["width"],
                    "height": row["height"],
                    "t2i_model": t2i_model,
                    "clip_model": clip_model,
                }
            )
    counts = {key: writer.rows for key, writer in writers.items()}
    files = {key: writer.close() for key, writer in sorted(writers.items())}

    summary = _summary(config, root, counts, images_manifest, gate_manifest)
    summary["prompt_similarity"] = distribution(similarities)
    summary["configs"] = configs_for(files)
    summary["dataset_info"] = dataset_infos(staging, summary["configs"])
    coprov2_dataset_card(summary, config.license).save(staging / "README.md")
    release = root / RELEASE_FOLDER_NAME
    if release.exists():
        # made from the previous dataset/: removed before the new one is swapped in, so that no run, killed
        # or finished, leaves a release layout that disagrees with dataset/ (it is written again when asked)
        shutil.rmtree(release)
        if not config.release_layout:
            logger.warning("removed %s: it held the previous dataset's pairs (--no_release_layout)", release)
    swap_in(staging, target)
    if config.release_layout:
        export_release_layout(target, release)
    return summary


def _summary(
    config: DatasetConfig,
    root: Path,
    counts: dict[tuple[str, str], int],
    images_manifest: dict[str, Any],
    gate_manifest: dict[str, Any],
) -> dict[str, Any]:
    prompts_manifest = StageDir.finished(root, "prompts").read_manifest()
    rejection_rows = [
        {"stage": "prompts", "reason": reason, "count": count}
        for reason, count in prompts_manifest["stats"].get("rejected", {}).items()
    ] + [
        {"stage": "gate", "reason": reason, "count": count}
        for reason, count in gate_manifest["gate"]["reasons"].items()
    ]
    prompts_config = prompts_manifest["config"]
    render = images_manifest["config"]
    gate = gate_manifest["gate"]
    return {
        "rows_total": sum(counts.values()),
        "split_rows": split_rows(counts),
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
        "t2i_model": images_manifest["t2i_model"],
        "steps": render["steps"],
        "guidance": render["guidance"],
        "clip_model": gate_manifest["clip_model"],
        "threshold": round(gate["threshold_applied"], 4),
        "min_score": gate["min_score"],
        "percentile": gate["percentile"],
        "require_own_closer": gate["require_own_closer"],
        "rejections_by_reason": {f"{r['stage']}/{r['reason']}": r["count"] for r in rejection_rows},
    }
