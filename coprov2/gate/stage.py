"""Stage ``gate``: CLIP scores per pair (sharded, resumable), then one global keep/reject pass.

Gate shard ``i`` scores images shard ``i``, reading and decoding ``batch_size`` pairs at a time, and
writes its embeddings as part ``i`` of a clip-retrieval folder (``gate/embeddings``). The decision
(``gate/decisions.jsonl``: every pair, passed or not, with its reasons) is recomputed on every run
from the stored scores, so changing the threshold or the percentile re-gates a finished run without
touching CLIP again.
"""

from __future__ import annotations

import functools
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from coprov2.errors import UserError
from coprov2.executor import Stage
from coprov2.gate.clip_scores import SCORE_NAMES, ClipEmbedder, pair_scores
from coprov2.gate.config import GateConfig
from coprov2.gate.decide import decide
from coprov2.gate.retrieval import image_stem, read_image_embeddings, write_embedding_part
from coprov2.stage_io import ShardWriter, StageDir, atomic_write_jsonl, batched

ROLES = ("unsafe", "safe")
SCORES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("concept", pa.string()),
        *[(name, pa.float64()) for name in SCORE_NAMES],
    ]
)


class GateStage(Stage):
    """Scores the images stage's pairs with CLIP into ``gate/`` shards and decides which pairs pass."""

    name = "gate"
    schema = SCORES_SCHEMA
    #: The keep rule is applied in summarize(), from stored scores, on every run: no shard depends on it.
    OUTPUT_NEUTRAL = frozenset({"min_score", "percentile", "require_own_closer"})

    def __init__(
        self,
        config: GateConfig,
        resolve_model: Callable[[str], str] = str,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(config)
        self.resolve_model = resolve_model
        self.device = device or torch.device("cpu")

    def num_shards(self, root: Path) -> int:
        return StageDir.finished(root, "images").num_shards

    def inputs(self, root: Path) -> dict[str, Any]:
        return {"images": StageDir.finished(root, "images").manifest_sha256()}

    @functools.cache  # noqa: B019 - one model per stage object, which lives for one build
    def embedder(self) -> ClipEmbedder:
        return ClipEmbedder(self.resolve_model(self.config.clip_model), self.device, self.config.batch_size)

    @functools.cache  # noqa: B019
    def external(self) -> dict[str, np.ndarray]:
        return read_image_embeddings(self.config.image_embeddings)

    def image_embeddings(self, rows: list[dict[str, Any]]) -> np.ndarray:
        if self.config.image_embeddings is None:
            decoded = [
                Image.open(io.BytesIO(row[f"{role}_image"])).convert("RGB") for role in ROLES for row in rows
            ]
            return self.embedder().images(decoded)
        stems = [image_stem(row["id"], role) for role in ROLES for row in rows]
        missing = [stem for stem in stems if stem not in self.external()]
        if missing:
            raise UserError(
                f"{self.config.image_embeddings} has no embedding for {len(missing)} image(s), e.g. {missing[0]}; "
                "embed the files written by `python -m coprov2.gate.retrieval`"
            )
        return np.stack([self.external()[stem] for stem in stems])

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        if writer.committed:  # scoring a shard takes seconds: one part
            return
        images = StageDir.finished(root, "images")
        records: list[dict[str, Any]] = []
        image_embs, text_embs, paths, captions = [], [], [], []
        for rows in batched(
            images.iter_shard(index, batch_size=self.config.batch_size), self.config.batch_size
        ):
            n = len(rows)
            texts = [row[f"{role}_prompt"] for role in ROLES for row in rows]
            image_emb, text_emb = self.image_embeddings(rows), self.embedder().texts(texts)
            scores = pair_scores(image_emb[:n], image_emb[n:], text_emb[:n], text_emb[n:])
            records += [
                {
                    "id": row["id"],
                    "category": row["category"],
                    "concept": row["concept"],
                    **{name: float(values[i]) for name, values in scores.items()},
                }
                for i, row in enumerate(rows)
            ]
            # clip-retrieval part ``index``: per batch, its unsafe images then its safe ones
            image_embs.append(image_emb)
            text_embs.append(text_emb)
            paths += [
                f"{image_stem(row['id'], role)}.{row['image_format']}" for role in ROLES for row in rows
            ]
            captions += texts
        if records:
            write_embedding_part(
                writer.stage.dir / "embeddings",
                index,
                np.concatenate(image_embs),
                paths,
                np.concatenate(text_embs),
                captions,
            )
        writer.commit(records, stats={"scored": dict(Counter(r["category"] for r in records))})

    def summarize(self, stage_dir: StageDir) -> dict[str, Any]:
        decisions, cut = decide(stage_dir.read_records(), self.config)
        atomic_write_jsonl(stage_dir.dir / "decisions.jsonl", decisions)
        return {
            "clip_model": self.config.clip_model,
            "gate": {
                "threshold_applied": cut,
                "min_score": self.config.min_score,
                "percentile": self.config.percentile,
                "require_own_closer": self.config.require_own_closer,
                "passed": sum(d["passed"] for d in decisions),
                "rejected": sum(not d["passed"] for d in decisions),
                "reasons": dict(sorted(Counter(r for d in decisions for r in d["reasons"]).items())),
            },
        }
