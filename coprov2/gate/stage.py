"""Stage ``gate``: CLIP scores per pair (sharded, resumable), then one global keep/reject pass.

Shard ``i`` scores images shard ``i`` and writes its embeddings as part ``i`` of a clip-retrieval
folder (``gate/embeddings``). The decision (``gate/decisions.jsonl``: every pair, passed or not, with
its reasons) is recomputed on every run from the stored scores, so changing the threshold or the
percentile re-gates a finished run without touching CLIP again.
"""

from __future__ import annotations

import functools
import io
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from coprov2.executor import distributed_state, run_sharded
from coprov2.gate.clip_scores import ClipEmbedder, pair_scores
from coprov2.gate.decide import decide
from coprov2.gate.retrieval import image_stem, read_image_embeddings, write_embedding_part
from coprov2.images.stage import images_stage_dir, read_image_rows
from coprov2.stage_io import ShardResult, StageDir, atomic_write_jsonl

if TYPE_CHECKING:
    from coprov2.config import BuildConfig

ROLES = ("unsafe", "safe")


def gate_stage_dir(config: BuildConfig) -> StageDir:
    return StageDir(Path(config.output_dir), "gate", config.num_shards)


def run_gate_stage(config: BuildConfig) -> dict[str, Any]:
    images = images_stage_dir(config)
    stage = gate_stage_dir(config)
    stage_config = {
        "images": images.manifest_sha256(),
        "clip_model": config.clip_model,
        "image_embeddings": config.gate_image_embeddings,
    }

    @functools.cache
    def embedder() -> ClipEmbedder:
        model = config.resolve_model(config.clip_model)
        return ClipEmbedder(model, distributed_state().device, config.clip_batch_size)

    @functools.cache
    def external() -> dict[str, np.ndarray]:
        return read_image_embeddings(config.gate_image_embeddings)

    def image_embeddings(rows: list[dict[str, Any]]) -> np.ndarray:
        if config.gate_image_embeddings is None:
            decoded = [
                Image.open(io.BytesIO(row[f"{role}_image"])).convert("RGB") for role in ROLES for row in rows
            ]
            return embedder().images(decoded)
        stems = [image_stem(row["id"], role) for role in ROLES for row in rows]
        missing = [stem for stem in stems if stem not in external()]
        if missing:
            raise KeyError(
                f"{config.gate_image_embeddings} has no embedding for {len(missing)} image(s), e.g. {missing[0]}; "
                "embed the files written by `python -m coprov2.gate.retrieval`"
            )
        return np.stack([external()[stem] for stem in stems]) if stems else np.zeros((0, 1), np.float32)

    def step(index: int):
        rows = read_image_rows(images, index)
        n = len(rows)
        captions = [row[f"{role}_prompt"] for role in ROLES for row in rows]
        image_emb = image_embeddings(rows)
        text_emb = embedder().texts(captions)
        scores = pair_scores(image_emb[:n], image_emb[n:], text_emb[:n], text_emb[n:])
        records = [
            {
                "id": row["id"],
                "category": row["category"],
                "concept": row["concept"],
                **{name: float(values[i]) for name, values in scores.items()},
            }
            for i, row in enumerate(rows)
        ]
        paths = [f"{image_stem(row['id'], role)}.{row['image_format']}" for role in ROLES for row in rows]
        write_embedding_part(stage.dir / "embeddings", index, image_emb, paths, text_emb, captions)
        return ShardResult(records, [], {"scored": dict(Counter(r["category"] for r in records))}), {}

    def summarize() -> dict[str, Any]:
        decisions, cut = decide(stage.read_records(), config)
        atomic_write_jsonl(stage.dir / "decisions.jsonl", decisions)
        return {
            "gate": {
                "threshold_applied": cut,
                "min_score": config.gate_min_score,
                "percentile": config.gate_percentile,
                "require_own_closer": config.gate_require_own_closer,
                "passed": sum(d["passed"] for d in decisions),
                "rejected": sum(not d["passed"] for d in decisions),
                "reasons": dict(sorted(Counter(r for d in decisions for r in d["reasons"]).items())),
            }
        }

    return run_sharded(
        stage, stage_config, step, {"clip_model": config.clip_model}, config.progress, summarize
    )
