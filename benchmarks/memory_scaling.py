"""Peak memory of the builder's image path (images -> gate -> dataset) and of the DPO encode cache,
against the number of pairs: it must stay flat (16k pairs <= 1.15 x 1k) for the paper's scale.

    python benchmarks/memory_scaling.py --out /tmp/memory --pairs 1000 4000 16000 --dpo_pairs 1000 8000

Each stage runs in its own process (through the library's stage objects and executor, the same
code as ``python -m coprov2.build``), and its peak RSS is that process's ``ru_maxrss``.

What is synthetic, and how it differs from a real build:
- the prompts stage is a stand-in stage (no LLM) that emits N pairs over 7 categories;
- the text-to-image pipeline is a stand-in with diffusers' call signature that returns 512 px images
  whose PNGs are about as large as Stable Diffusion's (~400-500 KB: half of each image is noise,
  half smooth), so shards, row groups and parquet files have the real sizes; everything after
  the pipeline call (PNG encoding, parts, shard files, the gate, the export) is the real code;
- the gate uses the tiny random CLIP (the images are still decoded and preprocessed at 512 px);
- the dataset export runs without the release layout (JPEG re-encoding of every image would
  double the run time on this CPU; that export streams through ``load_dataset(streaming=True)``);
- DPO encodes a synthetic CoProV2 folder of 64 px pairs with the tiny SD1.5 VAE at 64 px (the
  cache then holds ~75 KB per pair) and trains 2 steps from the cache; its parquet files hold about
  620 pairs each, as a real 512 px export's 500MB files do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from coprov2.executor import Stage, run_stage
from coprov2.prompts.stage import PAIRS_SCHEMA
from coprov2.stage_io import ShardWriter

CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal-activity")
PAPER_PAIRS = 23_690
MAX_SHARD_SIZE = "500MB"


@dataclass
class SyntheticPromptsConfig:
    pairs: int = 1000
    prompts_per_concept: int = 1
    templates: dict[str, str] = field(default_factory=lambda: {"synthetic": "none"})


class SyntheticPrompts(Stage):
    """Stands in for the LLM prompts stage: ``pairs`` rows over 7 categories, 40 concepts each."""

    name = "prompts"
    schema = PAIRS_SCHEMA

    def num_shards(self, root: Path) -> int:
        return 8

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        rows = []
        for i in range(index, self.config.pairs, 8):
            category = CATEGORIES[i % 7]
            rows.append(
                {
                    "id": f"{i:016x}",
                    "category": category,
                    "concept": f"concept {(i // 7) % 40}",
                    "unsafe_prompt": f"an unsafe scene number {i} about {category}",
                    "safe_prompt": f"a calm garden scene number {i}",
                    "unsafe_request_seed": i,
                    "safe_request_seed": i,
                }
            )
        writer.commit(rows, stats={"pairs": {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}})

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        return {"llm_model": "synthetic", "taxonomy_concepts": dict.fromkeys(CATEGORIES, 40)}


class SyntheticPipeline:
    """diffusers' text-to-image call signature; 512 px images of realistic PNG size, one per generator."""

    def __call__(self, prompt, generator, height=None, width=None, **_: Any):
        size = height or 512
        images = []
        for g in generator:
            noise = torch.randint(0, 256, (size // 2, size, 3), generator=g, dtype=torch.uint8)
            smooth = torch.linspace(0, 255, size).to(torch.uint8)[None, :, None].expand(size // 2, size, 3)
            images.append(Image.fromarray(torch.cat([noise, smooth]).numpy()))
        return type("Output", (), {"images": images})()


def _child(kind: str, root: Path, pairs: int) -> None:
    from coprov2.dataset.config import DatasetConfig
    from coprov2.dataset.export import export_dataset
    from coprov2.gate.config import GateConfig
    from coprov2.gate.stage import GateStage
    from coprov2.images.config import ImagesConfig
    from coprov2.images.stage import ImagesStage
    from coprov2.tiny import resolve_tiny_model

    if kind == "prompts":
        run_stage(SyntheticPrompts(SyntheticPromptsConfig(pairs)), root, progress=False)
    elif kind == "images":
        config = ImagesConfig(model="synthetic", steps=1, height=512, width=512)
        run_stage(ImagesStage(config, load_pipeline=lambda *a: SyntheticPipeline()), root, progress=False)
    elif kind == "gate":
        clip = resolve_tiny_model("tiny:clip", root.parent / "tiny-models")
        config = GateConfig(clip_model=clip, min_score=-1.0, require_own_closer=False)
        run_stage(GateStage(config), root, progress=False)
    elif kind == "dataset":
        export_dataset(DatasetConfig(release_layout=False, max_shard_size=MAX_SHARD_SIZE), root)
    elif kind == "dpo":
        _dpo(root, pairs)


def _dpo(root: Path, pairs: int) -> None:
    import io

    from datasets import Features, Value
    from datasets import Image as ImageFeature

    from coprov2.dataset.parquet_writer import ShardedParquetWriter
    from dpo import DPOConfig, train_expert

    features = Features(
        {"id": Value("string"), "category": Value("string"), "unsafe_prompt": Value("string"),
         "unsafe_image": ImageFeature(), "safe_image": ImageFeature()}
    )  # fmt: skip
    # ~620 pairs per file, as in a real 512 px export's 500MB files (about 800 KB a pair there, 24 KB here)
    writer = ShardedParquetWriter(root / "data" / "violence", "train", features.arrow_schema, 15_000_000)
    rng = np.random.default_rng(0)
    for i in range(pairs):
        images = []
        for _ in range(2):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        writer.write({"id": str(i), "category": "violence", "unsafe_prompt": f"scene {i}",
                      "unsafe_image": images[0], "safe_image": images[1]})  # fmt: skip
    writer.close()
    config = DPOConfig(
        dataset=str(root), category="violence", base="tiny:sd15", output_dir=str(root / "expert"),
        cache_dir=str(root / "cache"), resolution=64, max_train_steps=2, train_batch_size=2,
        lr_warmup_steps=0, progress=False,
    )  # fmt: skip
    train_expert(config)


def _run(kind: str, root: Path, pairs: int) -> dict[str, float]:
    start = time.monotonic()
    command = [sys.executable, __file__, "--_child", kind, "--_root", str(root), "--_pairs", str(pairs)]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} at {pairs} pairs failed (status {status})")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": time.monotonic() - start}


def _projection(ns: list[int], values: list[float]) -> float:
    slope, intercept = np.polyfit(ns, values, 1) if len(ns) > 1 else (0.0, values[0])
    return float(intercept + slope * PAPER_PAIRS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="folder for the runs and the results")
    parser.add_argument("--pairs", type=int, nargs="*", default=[1000, 4000, 16000])
    parser.add_argument("--dpo_pairs", type=int, nargs="*", default=[1000, 8000])
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_pairs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        torch.set_num_threads(1)
        _child(args._child, args._root, args._pairs)
        return
    if args.out is None:
        parser.error("--out is required")

    from datasets.utils.py_utils import convert_file_size_to_int

    results: dict[str, Any] = {"build": {}, "dpo": {}}
    for n in args.pairs:
        root = args.out / f"build-{n}"
        row = {kind: _run(kind, root, n) for kind in ("prompts", "images", "gate", "dataset")}
        files = sorted((root / "dataset" / "data").rglob("*.parquet"))
        row["largest_parquet_mib"] = max(p.stat().st_size for p in files) / 2**20
        row["parquet_files"] = len(files)
        row["dataset_rows"] = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        row["images_gib"] = sum(p.stat().st_size for p in (root / "images").glob("*.parquet")) / 2**30
        assert all(p.stat().st_size <= convert_file_size_to_int(MAX_SHARD_SIZE) for p in files)
        results["build"][n] = row
        print(json.dumps({n: row}), flush=True)
    for n in args.dpo_pairs:
        results["dpo"][n] = _run("dpo", args.out / f"dpo-{n}", n)
        print(json.dumps({f"dpo {n}": results["dpo"][n]}), flush=True)

    lines: list[str] = []
    if args.pairs:
        lines = ["| stage | " + " | ".join(f"{n:,} pairs" for n in args.pairs) + " | largest / smallest | "
                 f"projected at {PAPER_PAIRS:,} |", "|---" * (len(args.pairs) + 3) + "|"]  # fmt: skip
        for kind in ("images", "gate", "dataset"):
            values = [results["build"][n][kind]["peak_rss_mib"] for n in args.pairs]
            lines.append(
                f"| {kind} (peak RSS MiB) | " + " | ".join(f"{v:,.0f}" for v in values)
                + f" | {values[-1] / values[0]:.3f}x | {_projection(args.pairs, values):,.0f} |"
            )  # fmt: skip
        lines.append("| largest parquet file (MiB) | " + " | ".join(
            f"{results['build'][n]['largest_parquet_mib']:,.0f}" for n in args.pairs) + " | | |")  # fmt: skip
        lines.append("| images stage (GiB of parquet) | " + " | ".join(
            f"{results['build'][n]['images_gib']:.1f}" for n in args.pairs) + " | | |")  # fmt: skip
    if args.dpo_pairs:
        values = [results["dpo"][n]["peak_rss_mib"] for n in args.dpo_pairs]
        lines += ["", "| DPO encode + 2 steps | " + " | ".join(f"{n:,} pairs" for n in args.dpo_pairs)
                  + " | largest / smallest |", "|---" * (len(args.dpo_pairs) + 2) + "|",
                  "| peak RSS MiB | " + " | ".join(f"{v:,.0f}" for v in values)
                  + f" | {values[-1] / values[0]:.3f}x |"]  # fmt: skip
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_scaling.json").write_text(json.dumps(results, indent=2))
    (args.out / "memory_scaling.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
