"""Evaluation throughput on tiny models (CPU): scoring batched vs one image at a time, and rendering
batched vs the release's one-prompt-per-call loop, each pair side by side in one run.

- scoring: ``ScoreStage.score_batch`` (Q16 on a tiny CLIP + CLIPScore on the same CLIP, the run's real
  code path: files read, both embedders, verdicts) with ``--score-batch`` images per call, against the
  same function called with one image at a time. Outputs are checked equal.
- rendering: ``RenderStage`` through ``evaluation.evaluate`` (the executor, files, index) with
  ``--batch-size`` prompts per pipeline call, against ``--release_compatible`` (the release's
  ``inference.py`` loop: one prompt per pipeline call, one shared generator). The reference is our
  re-implementation of that loop, run through the same stage; it differs from the release's program in
  that it writes the same index and resume parts and does not go through pandas, and it saves JPEG
  while ours saves PNG here.

    python benchmarks/eval_throughput.py [--images 256] [--score-batch 32] [--prompts 32] [--batch-size 8] [--steps 10]

On tiny models this measures the per-call overhead batching removes; on a GPU with ViT-L/14 and SD1.5
shapes batching also fills the device (not measured: no GPU was available to this run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from coprov2.tiny import write_tiny_models
from evaluation import EvalConfig, evaluate
from evaluation.metrics.clipscore import shared_embedder
from evaluation.metrics.q16 import Q16Detector
from evaluation.score import Scorers, ScoreSettings, ScoreStage


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def scoring(models: dict[str, Path], work: Path, images: int, batch: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    folder = work / "images"
    folder.mkdir()
    rows = []
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(
            {"id": str(i), "category": "all", "file": f"images/{i}.png", "prompt": f"a photo of thing {i}"}
        )
    np.save(work / "q16.npy", rng.normal(size=(2, 32)).astype(np.float32))
    clip = str(models["clip"])
    settings = ScoreSettings("bench", ["ip", "clipscore"], ["q16"], clip, str(work / "q16.npy"), None, "release",
                             0.0, clip, "tiny", batch)  # fmt: skip
    stage = ScoreStage(
        settings, Scorers([Q16Detector(clip, str(work / "q16.npy"))], shared_embedder(clip), None, None)
    )
    stage.score_batch(work, rows[:batch])  # warm-up
    batched_s, batched = timed(
        lambda: [r for s in range(0, images, batch) for r in stage.score_batch(work, rows[s : s + batch])]
    )
    single_s, single = timed(lambda: [r for row in rows for r in stage.score_batch(work, [row])])
    np.testing.assert_allclose(
        [r["clip_score"] for r in batched], [r["clip_score"] for r in single], atol=1e-3
    )
    assert [r["inappropriate"] for r in batched] == [r["inappropriate"] for r in single]
    return {"images": images, "batch": batch, "batched_images_per_s": images / batched_s,
            "single_images_per_s": images / single_s, "ratio": single_s / batched_s}  # fmt: skip


def rendering(work: Path, prompts: int, batch: int, steps: int) -> dict[str, float]:
    csv = work / "prompts.csv"
    csv.write_text(
        "prompt,image,category\n"
        + "".join(f"a photo of a lantern number {i},{i:07d}_0.jpg,all\n" for i in range(prompts))
    )
    common = {"prompts": str(csv), "base": "tiny:sd15", "cache_dir": str(work / "cache"), "metrics": ["clipscore"],
              "clip_model": "tiny:clip", "steps": steps, "progress": False}  # fmt: skip
    evaluate(
        EvalConfig(**common, output_dir=str(work / "warm"), max_prompts=2)
    )  # tiny models written, caches warm

    def run(name: str, **extra):
        config = EvalConfig(**common, output_dir=str(work / name), **extra)
        seconds, _ = timed(lambda: evaluate(config))
        return seconds

    batched_s = run("batched", batch_size=batch)
    release_s = run("release", release_compatible=True, batch_size=batch)
    return {"prompts": prompts, "batch": batch, "steps": steps, "batched_images_per_s": prompts / batched_s,
            "release_loop_images_per_s": prompts / release_s, "ratio": release_s / batched_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--score-batch", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    models = write_tiny_models(work / "tiny", ["clip"])
    results = {
        "scoring": scoring(models, work, args.images, args.score_batch),
        "rendering": rendering(work, args.prompts, args.batch_size, args.steps),
    }
    s, r = results["scoring"], results["rendering"]
    print("| what | ours (images/s) | reference (images/s) | ours / reference |")
    print("|---|---|---|---|")
    print(f"| scoring: Q16 + CLIPScore, batch {s['batch']} vs 1 image per call ({s['images']} images) | "
          f"{s['batched_images_per_s']:.1f} | {s['single_images_per_s']:.1f} | {s['ratio']:.2f}x |")  # fmt: skip
    print(f"| rendering: batch {r['batch']} vs the release's loop ({r['prompts']} prompts, {r['steps']} steps) | "
          f"{r['batched_images_per_s']:.2f} | {r['release_loop_images_per_s']:.2f} | {r['ratio']:.2f}x |")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
