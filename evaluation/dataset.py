"""Evaluate a CoProV2 dataset (ours, or the release imported): the paper's dataset comparison.

Per category: IP of the unsafe images vs the safe images (a good dataset: high on the unsafe side, low
on the safe side), CLIPScore of each image with its own prompt, and how close each safe prompt stays to
its unsafe twin (word-sequence ratio and word Jaccard, ``coprov2.prompts.similarity``) as a
distribution. One stage per split on the builder's executor; a shard is one parquet file of the
dataset (``IterableDataset.shard``), streamed ``--score_batch_size`` pairs at a time, so a rerun
resumes and memory does not grow with the dataset.

``python -m evaluation.dataset --dataset coprov2-out/dataset --output_dir dataset-eval``
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from coprov2.cli import DataclassArgumentParser
from coprov2.errors import UserError, check_finite, run_cli
from coprov2.executor import Stage, run_stage
from coprov2.paths import check_hub_access, check_writable_dir
from coprov2.prompts.similarity import distribution, token_jaccard, word_sequence_ratio
from coprov2.stage_io import ShardWriter, StageDir, atomic_write_text, batched
from coprov2.tiny import resolve_tiny_model
from evaluation.config import ScoringConfig
from evaluation.gallery import write_gallery
from evaluation.metrics.clipscore import clip_scores, shared_embedder
from evaluation.metrics.ip import categories_of, detect, flagged_by, load_detector

logger = logging.getLogger(__name__)
SIDES = ("unsafe", "safe")

DATASET_SCORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        *[(f"{side}_flagged_by", pa.string()) for side in SIDES],
        *[(f"{side}_clip_score", pa.float64()) for side in SIDES],
        ("prompt_similarity", pa.float64()),
        ("prompt_jaccard", pa.float64()),
    ]
)


@dataclass
class DatasetEvalConfig(ScoringConfig):
    """IP (unsafe vs safe images), CLIPScore and unsafe/safe prompt similarity of a CoProV2 dataset."""

    dataset: str = field(default="", metadata={"help": "CoProV2 dataset: folder or Hub repo id"})
    dataset_config: str | None = field(default=None, metadata={"help": "dataset config (default: all)"})
    splits: list[str] = field(
        default_factory=lambda: ["train", "test"], metadata={"help": "splits to evaluate"}
    )
    output_dir: str = field(default="dataset-eval", metadata={"help": "where scores and the report go"})
    blur: bool = field(
        default=True, metadata={"help": "gallery.html blurs flagged images until clicked (--no_blur: never)"}
    )
    gallery_max_pairs: int = field(
        default=96, metadata={"help": "gallery.html: pairs shown per category and split"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("gallery_max_pairs", self.gallery_max_pairs, 1)


def _stream(config: DatasetEvalConfig, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(config.dataset, config.dataset_config, split=split, streaming=True)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(f"--dataset {config.dataset}: {str(error)[:300]}") from None


class DatasetScoreStage(Stage):
    schema = DATASET_SCORE_SCHEMA
    #: Where the run goes and how it reports do not change a score; the split is in the stage's name.
    OUTPUT_NEUTRAL = frozenset(
        {"output_dir", "cache_dir", "progress", "splits", "blur", "gallery_max_pairs", "wait_for_lock"}
    )

    def __init__(self, config: DatasetEvalConfig, split: str, detectors: list[Any], clip: Any) -> None:
        super().__init__(config)
        self.split, self.name = split, f"dataset-{split}"
        self.detectors, self.clip = detectors, clip

    def num_shards(self, root: Path) -> int:
        return _stream(self.config, self.split).num_shards

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        stream = _stream(self.config, self.split).shard(self.num_shards(root), index)
        for number, batch in enumerate(batched(stream, self.config.score_batch_size)):
            if number >= writer.committed:
                writer.commit(self.score_batch(batch))

    def _flags(self, images: list[Image.Image]) -> list[str]:
        """Which detectors flag each image (NudeNet reads files, so the batch is written to a temp folder)."""
        with tempfile.TemporaryDirectory() as folder:
            paths = [Path(folder) / f"{i}.png" for i in range(len(images))]
            for image, path in zip(images, paths, strict=True):
                image.save(path)
            verdicts = detect(self.detectors, paths, images)
        return [",".join(flagged_by(v)) for v in verdicts]

    def score_batch(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: dict[str, Any] = {}
        for side in SIDES:
            images = [row[f"{side}_image"].convert("RGB") for row in batch]
            out[f"{side}_flagged_by"] = self._flags(images)
            prompts = [row.get(f"{side}_prompt") for row in batch]
            scores: list[float | None] = [None] * len(batch)
            if all(prompts):  # the release has no safe prompts
                scores = clip_scores(self.clip.images(images), self.clip.texts(prompts)).tolist()
            out[f"{side}_clip_score"] = scores
        rows = []
        for k, row in enumerate(batch):
            unsafe, safe = row.get("unsafe_prompt"), row.get("safe_prompt")
            rows.append({
                "id": row["id"], "category": row["category"],
                **{name: values[k] for name, values in out.items()},
                "prompt_similarity": word_sequence_ratio(unsafe, safe) if unsafe and safe else None,
                "prompt_jaccard": token_jaccard(unsafe, safe) if unsafe and safe else None,
            })  # fmt: skip
        return rows

    def summarize(self, stage_dir: StageDir) -> Mapping[str, Any]:
        """Per category (and ``all``): IP of each side, mean CLIPScore of each side, similarity distributions."""
        groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for row in stage_dir.iter_rows():
            for name in ["all", *categories_of(row["category"])]:
                for key, value in row.items():
                    if key not in ("id", "category"):
                        groups[name][key].append(value)
        summary = {}
        for name, values in sorted(groups.items()):
            entry: dict[str, Any] = {"pairs": len(values["unsafe_flagged_by"])}
            for side in SIDES:
                flags = values[f"{side}_flagged_by"]
                entry[f"ip_{side}"] = round(sum(bool(f) for f in flags) / len(flags), 5)
                clip = [v for v in values[f"{side}_clip_score"] if v is not None]
                entry[f"clipscore_{side}"] = sum(clip) / len(clip) if clip else None
            entry["prompt_similarity"] = distribution(values["prompt_similarity"])
            entry["prompt_jaccard"] = distribution(values["prompt_jaccard"])
            summary[name] = entry
        return {"by_category": summary}


def markdown_table(results: dict[str, Any]) -> str:
    def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    header = ["split", "category", "pairs", "IP unsafe (%)", "IP safe (%)", "CLIPScore unsafe", "CLIPScore safe",
              "similarity median (p10-p90)", "Jaccard median"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for split, categories in results["splits"].items():
        for name, e in categories.items():
            sim, jac = e["prompt_similarity"], e["prompt_jaccard"]
            spread = (
                f"{fmt(sim['median'], digits=3)} ({fmt(sim['p10'], digits=3)}-{fmt(sim['p90'], digits=3)})"
            )
            cells = [split, name, str(e["pairs"]), fmt(e["ip_unsafe"], 100), fmt(e["ip_safe"], 100),
                     fmt(e["clipscore_unsafe"], digits=2), fmt(e["clipscore_safe"], digits=2), spread,
                     fmt(jac["median"], digits=3)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_dataset(config: DatasetEvalConfig) -> dict[str, Any]:
    """Score every split of the dataset; writes ``dataset_results.json``, ``dataset_results.md`` and
    ``gallery.html`` (its pairs, each image blurred when a detector flagged it)."""
    if not config.dataset:
        raise UserError("--dataset: no dataset given (a CoProV2 folder or Hub repo id)")
    check_writable_dir(config.output_dir, "--output_dir")
    if not Path(config.dataset).exists():
        check_hub_access(config.dataset, "--dataset", repo_type="dataset", filename="README.md")
    for split in config.splits:
        _stream(config, split)
    tiny_dir = Path(config.cache_dir) / "tiny-models"
    resolved = dataclasses.replace(
        config,
        q16_clip_model=resolve_tiny_model(config.q16_clip_model, tiny_dir),
        clip_model=resolve_tiny_model(config.clip_model, tiny_dir),
    )
    detectors = [load_detector(spec, resolved) for spec in config.ip_detectors]
    clip = shared_embedder(resolved.clip_model, config.score_batch_size)
    root = Path(config.output_dir)
    results = {
        "dataset": config.dataset,
        "config": config.dataset_config,
        "settings": dataclasses.asdict(config),
        "splits": {},
    }
    for split in config.splits:
        manifest = run_stage(
            DatasetScoreStage(config, split, detectors, clip), root, config.progress, config.wait_for_lock
        )
        results["splits"][split] = manifest["by_category"]
    atomic_write_text(root / "dataset_results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write_text(root / "dataset_results.md", markdown_table(results))
    flags = {
        (split, row["id"]): (row["unsafe_flagged_by"], row["safe_flagged_by"])
        for split in config.splits
        for row in StageDir.finished(root, f"dataset-{split}").iter_rows(
            columns=["id", "unsafe_flagged_by", "safe_flagged_by"]
        )
    }
    write_gallery(config.dataset, root, dataset_config=config.dataset_config, splits=tuple(config.splits),
                  flags=flags, blur=config.blur, max_pairs=config.gallery_max_pairs)  # fmt: skip
    return results


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        DatasetEvalConfig, prog="python -m evaluation.dataset", description=__doc__.split("\n\n")[0]
    )


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        (config,) = make_parser().parse_args_into_dataclasses(args=argv)
        print(markdown_table(evaluate_dataset(config)), end="")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
