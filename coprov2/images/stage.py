"""Stage ``images``: render every pair of prompts shard ``i`` into images shard ``i``.

Per shard: ``<shard>.parquet`` holds the pair rows with both images as lossless bytes; the JSONL
records hold the same rows without the bytes but with each image's sha256 (cheap to inspect and
hash). The executor writes the parquet first and the stats last, so a shard is whole or absent.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from coprov2.executor import distributed_state, run_sharded
from coprov2.images.render import encode_image, load_t2i_pipeline, render_pairs, render_seed
from coprov2.prompts.stage import prompts_stage_dir
from coprov2.stage_io import ShardResult, StageDir

if TYPE_CHECKING:
    from coprov2.config import BuildConfig

PAIR_FIELDS = ("id", "category", "concept", "unsafe_prompt", "safe_prompt")


def images_stage_dir(config: BuildConfig) -> StageDir:
    return StageDir(Path(config.output_dir), "images", config.num_shards)


def rows_to_parquet(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def read_image_rows(stage: StageDir, index: int) -> list[dict[str, Any]]:
    """The rows of images shard ``index``, image bytes included."""
    return pq.read_table(stage.extra_path(index, ".parquet")).to_pylist()


def run_images_stage(config: BuildConfig) -> dict[str, Any]:
    prompts = prompts_stage_dir(config)
    device = distributed_state().device
    stage_config = {
        "prompts": prompts.manifest_sha256(),
        "t2i_model": config.t2i_model,
        "seed": config.seed,
        "num_shards": config.num_shards,
        "render": {
            "dtype": config.t2i_dtype,
            "steps": config.t2i_steps,
            "guidance": config.t2i_guidance,
            "height": config.t2i_height,
            "width": config.t2i_width,
            "negative_prompt": config.t2i_negative_prompt,
            "image_format": config.image_format,
        },
    }

    @functools.cache
    def pipe():
        return load_t2i_pipeline(
            config.resolve_model(config.t2i_model), device, config.t2i_dtype, config.t2i_compile
        )

    def step(index: int):
        pairs = prompts.read_shard(index)
        rows: list[dict[str, Any]] = []
        batches = range(0, len(pairs), config.t2i_batch_pairs)
        for start in tqdm(batches, desc=f"render shard {index}", leave=False, disable=not config.progress):
            batch = pairs[start : start + config.t2i_batch_pairs]
            seeds = [render_seed(config.seed, pair["id"]) for pair in batch]
            with torch.inference_mode():
                images = render_pairs(
                    pipe(),
                    [p["unsafe_prompt"] for p in batch],
                    [p["safe_prompt"] for p in batch],
                    seeds,
                    config,
                )
            for pair, seed, (unsafe, safe) in zip(batch, seeds, images, strict=True):
                rows.append(
                    {
                        **{key: pair[key] for key in PAIR_FIELDS},
                        "seed": seed,
                        "width": unsafe.width,
                        "height": unsafe.height,
                        "image_format": config.image_format,
                        "unsafe_image": encode_image(unsafe, config.image_format),
                        "safe_image": encode_image(safe, config.image_format),
                    }
                )
        records = [
            {
                **{k: v for k, v in row.items() if not k.endswith("_image")},
                "unsafe_image_sha256": _sha(row["unsafe_image"]),
                "safe_image_sha256": _sha(row["safe_image"]),
            }
            for row in rows
        ]
        stats = {
            "images": {"rendered": 2 * len(rows)},
            "pairs": dict(Counter(row["category"] for row in rows)),
        }
        return ShardResult(records, [], stats), {".parquet": rows_to_parquet(rows)}

    return run_sharded(
        images_stage_dir(config), stage_config, step, {"t2i_model": config.t2i_model}, config.progress
    )


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
