"""Stage ``images``: render every pair of the prompts stage, both prompts from the pair's seed.

The pairs of the prompts stage, in shard order, are cut into images shards of ``shard_pairs``
pairs: the shard count follows the data, not the number of processes, so a 16-process launch
keeps 16 processes busy once there are 16 shards. Within a shard every pipeline call
(``batch_pairs`` pairs) is committed as it finishes, so a kill loses at most the call in flight
and the rerun renders the same batches again (batch borders depend only on positions).
Per shard, ``<shard>.parquet`` holds the pair rows with both images as lossless bytes.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from coprov2.executor import Stage
from coprov2.images.config import ImagesConfig
from coprov2.images.render import encode_image, load_t2i_pipeline, render_pairs, render_seed
from coprov2.stage_io import ShardWriter, StageDir, batched

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("id", "category", "concept", "unsafe_prompt", "safe_prompt")
IMAGES_SCHEMA = pa.schema(
    [
        *[(name, pa.string()) for name in PAIR_FIELDS],
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_format", pa.string()),
        ("unsafe_image", pa.binary()),
        ("safe_image", pa.binary()),
    ]
)


class ImagesStage(Stage):
    """Renders the prompts stage's pairs into ``images/`` shards."""

    name = "images"
    schema = IMAGES_SCHEMA

    def __init__(
        self,
        config: ImagesConfig,
        resolve_model: Callable[[str], str] = str,
        device: torch.device | None = None,
        load_pipeline: Callable[..., Any] = load_t2i_pipeline,
    ) -> None:
        """``load_pipeline(model, device, dtype, compile)`` defaults to diffusers' (benchmarks swap it)."""
        super().__init__(config)
        self.resolve_model = resolve_model
        self.device = device or torch.device("cpu")
        self.load_pipeline = load_pipeline

    def num_shards(self, root: Path) -> int:
        return max(1, math.ceil(StageDir.finished(root, "prompts").total_rows() / self.config.shard_pairs))

    def inputs(self, root: Path) -> dict[str, Any]:
        return {"prompts": StageDir.finished(root, "prompts").manifest_sha256()}

    @functools.cache  # noqa: B019 - one pipeline per stage object, which lives for one build
    def pipe(self) -> Any:
        config = self.config
        return self.load_pipeline(self.resolve_model(config.model), self.device, config.dtype, config.compile)

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        config = self.config
        start = index * config.shard_pairs
        pairs = StageDir.finished(root, "prompts").iter_rows(start, start + config.shard_pairs)
        for number, batch in enumerate(batched(pairs, config.batch_pairs)):
            if number < writer.committed:
                continue
            logger.debug("images: shard %d batch %d: rendering %d pairs", index, number, len(batch))
            seeds = [render_seed(config.seed, pair["id"]) for pair in batch]
            with torch.inference_mode():
                images = render_pairs(
                    self.pipe(),
                    [p["unsafe_prompt"] for p in batch],
                    [p["safe_prompt"] for p in batch],
                    seeds,
                    config,
                )
            rows = [
                {
                    **{key: pair[key] for key in PAIR_FIELDS},
                    "seed": seed,
                    "width": unsafe.width,
                    "height": unsafe.height,
                    "image_format": config.image_format,
                    "unsafe_image": encode_image(unsafe, config.image_format),
                    "safe_image": encode_image(safe, config.image_format),
                }
                for pair, seed, (unsafe, safe) in zip(batch, seeds, images, strict=True)
            ]
            stats = {
                "images": {"rendered": 2 * len(rows)},
                "pairs": dict(Counter(r["category"] for r in rows)),
            }
            writer.commit(rows, stats=stats)

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        return {"t2i_model": self.config.model}
