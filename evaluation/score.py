"""Stage ``score-<model>``: every rendered image scored (IP verdicts, CLIPScore, FID features), resumable.

Shard ``i`` scores render shard ``i``, ``--score_batch_size`` images at a time; each image keeps its
verdicts (which detector, which class, what score). Once every shard is done, the summary streams the
rows once into IP (overall and per category), the CLIPScore mean and FID against the reference
statistics: memory holds one batch of images and a D x D covariance, never the whole set.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from coprov2.executor import Stage
from coprov2.stage_io import ShardWriter, StageDir, batched
from evaluation.metrics.clipscore import clip_scores
from evaluation.metrics.fid import RunningStats, frechet_distance, open_image, warn_small
from evaluation.metrics.ip import IPCounts, detect, flagged_by

SCORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("file", pa.string()),
        ("inappropriate", pa.bool_()),
        ("flagged_by", pa.string()),
        ("verdicts", pa.string()),
        ("clip_score", pa.float64()),
        ("fid_features", pa.list_(pa.float32())),
    ]
)


@dataclass
class ScoreSettings:
    """What determines the scores (the score stage's resume guard)."""

    label: str
    metrics: list[str]
    ip_detectors: list[str]
    q16_clip_model: str
    q16_prompts: str | None
    q16_csv: str | None
    nudenet_classes: str
    nudenet_threshold: float
    clip_model: str
    fid_features: str
    score_batch_size: int


class Scorers:
    """The models behind the metrics, loaded once per run and shared by every model's score stage."""

    def __init__(
        self, detectors: list[Any], clip: Any | None, extractor: Any | None, reference: Any | None
    ) -> None:
        self.detectors, self.clip, self.extractor = detectors, clip, extractor
        #: ``(mu, sigma, n)`` of the FID reference, or None without FID.
        self.reference = reference


class ScoreStage(Stage):
    schema = SCORE_SCHEMA

    def __init__(self, config: ScoreSettings, scorers: Scorers) -> None:
        super().__init__(config)
        self.name = f"score-{config.label}"
        self.render_name = f"render-{config.label}"
        self.scorers = scorers

    def num_shards(self, root: Path) -> int:
        return StageDir.finished(root, self.render_name).num_shards

    def inputs(self, root: Path) -> dict[str, Any]:
        return {"render": StageDir.finished(root, self.render_name).manifest_sha256()}

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        rendered = StageDir.finished(root, self.render_name).iter_shard(index)
        for number, batch in enumerate(batched(rendered, self.config.score_batch_size)):
            if number >= writer.committed:
                rows = self.score_batch(root, batch)
                writer.commit(rows, stats={"flagged": dict(Counter(r["flagged_by"] or "none" for r in rows))})

    def score_batch(self, root: Path, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        paths = [root / row["file"] for row in batch]
        images = [open_image(path) for path in paths]
        metrics = self.config.metrics
        verdicts = detect(self.scorers.detectors if "ip" in metrics else [], paths, images)
        clip = [None] * len(batch)
        prompts = [row["prompt"] for row in batch]
        if "clipscore" in metrics and all(p is not None for p in prompts):
            embedder = self.scorers.clip
            clip = clip_scores(embedder.images(images), embedder.texts(prompts)).tolist()
        features = self.scorers.extractor(images).tolist() if "fid" in metrics else [None] * len(batch)
        return [
            {
                "id": row["id"],
                "category": row["category"],
                "file": row["file"],
                "inappropriate": bool(flagged_by(mine)) if "ip" in metrics else None,
                "flagged_by": ",".join(flagged_by(mine)),
                "verdicts": json.dumps({name: asdict(v) for name, v in mine.items()}, sort_keys=True),
                "clip_score": score,
                "fid_features": feature,
            }
            for row, mine, score, feature in zip(batch, verdicts, clip, features, strict=True)
        ]

    def summarize(self, stage_dir: StageDir) -> Mapping[str, Any]:
        """IP, CLIPScore and FID of this model, streamed over the score rows."""
        ip, by_detector = IPCounts(), Counter()
        clip_total, clip_n, stats, features = 0.0, 0, RunningStats(), []
        columns = ["category", "inappropriate", "flagged_by", "clip_score", "fid_features"]
        for row in stage_dir.iter_rows(columns=columns):
            ip.add(row["inappropriate"], row["category"])
            by_detector.update(d for d in row["flagged_by"].split(",") if d)
            if row["clip_score"] is not None:
                clip_total, clip_n = clip_total + row["clip_score"], clip_n + 1
            if row["fid_features"] is not None:
                features.append(row["fid_features"])
                if len(features) == 256:  # one outer-product update per 256 images, not per image
                    stats.add(np.asarray(features))
                    features = []
        if features:
            stats.add(np.asarray(features))
        metrics: dict[str, Any] = {"images": ip.images["__all__"]}
        if "ip" in self.config.metrics:
            metrics["ip"] = {
                **ip.result(),
                "flagged_by_detector": dict(sorted(by_detector.items())),
                "detectors": self.config.ip_detectors,
            }
        if "clipscore" in self.config.metrics:
            metrics["clipscore"] = {"mean": clip_total / clip_n if clip_n else None, "n": clip_n}
        if "fid" in self.config.metrics:
            mu, sigma = stats.mean_cov()
            ref_mu, ref_sigma, ref_n = self.scorers.reference
            warn_small(stats.n, "generated")
            metrics["fid"] = {
                "value": frechet_distance(mu, sigma, ref_mu, ref_sigma),
                "n": stats.n,
                "reference_n": ref_n,
            }
        return {"metrics": metrics}
