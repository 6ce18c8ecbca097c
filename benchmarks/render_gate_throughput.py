"""Paired rendering and CLIP gating throughput, batched vs one item per call, tiny models, one run.

- rendering: ``render_pairs`` (many pairs per pipeline call, one generator per image) against a
  diffusers loop that renders one prompt per call, both with the same seeds, steps and guidance;
- gate: ``ClipEmbedder.images`` with batches of 64 against one image per forward.

    python benchmarks/render_gate_throughput.py [--pairs 16] [--steps 10] [--batch-pairs 8] [--images 128]

On the tiny models this measures the per-call overhead that batching removes; on a GPU, with real
SD1.5/ViT-L/14 shapes, batching also fills the device (not measured here: no GPU was available).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from PIL import Image

from coprov2.gate.clip_scores import ClipEmbedder
from coprov2.images.config import ImagesConfig
from coprov2.images.render import load_t2i_pipeline, render_pairs
from coprov2.tiny import write_tiny_models


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-pairs", type=int, default=8)
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()

    models = write_tiny_models(tempfile.mkdtemp(prefix="bench-tiny-"), ["sd15", "clip"])
    pipe = load_t2i_pipeline(str(models["sd15"]), torch.device("cpu"))
    config = ImagesConfig(steps=args.steps, batch_pairs=args.batch_pairs)
    unsafe = [f"a photo of a knife number {i} on a table" for i in range(args.pairs)]
    safe = [f"a photo of a spoon number {i} on a table" for i in range(args.pairs)]
    seeds = list(range(args.pairs))

    def batched() -> None:
        for start in range(0, args.pairs, args.batch_pairs):
            end = start + args.batch_pairs
            render_pairs(pipe, unsafe[start:end], safe[start:end], seeds[start:end], config)

    def loop() -> None:
        for prompts in (unsafe, safe):
            for prompt, seed in zip(prompts, seeds, strict=True):
                pipe(
                    prompt=prompt,
                    num_inference_steps=args.steps,
                    guidance_scale=config.guidance,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="pil",
                )

    with torch.inference_mode():
        render_pairs(pipe, unsafe[:1], safe[:1], seeds[:1], config)  # warm-up
        loop_s, batched_s = timed(loop), timed(batched)

    embedder_batched = ClipEmbedder(str(models["clip"]), batch_size=64)
    embedder_single = ClipEmbedder(str(models["clip"]), batch_size=1)
    images = [
        Image.new("RGB", (32, 32), (i % 256, (7 * i) % 256, (13 * i) % 256)) for i in range(args.images)
    ]
    embedder_batched.images(images[:2])  # warm-up
    single_s = timed(lambda: embedder_single.images(images))
    gate_batched_s = timed(lambda: embedder_batched.images(images))

    print(
        f"tiny SD1.5-shaped pipeline, 32 px, {args.steps} steps, CFG 7.5; tiny CLIP; CPU, {torch.get_num_threads()} threads\n"
    )
    print("| work | reference (one per call) | batched | ratio |")
    print("|---|---|---|---|")
    print(
        f"| render, pairs/s ({args.pairs} pairs, {args.batch_pairs} pairs per call) | {args.pairs / loop_s:.2f} | "
        f"{args.pairs / batched_s:.2f} | {loop_s / batched_s:.1f}x |"
    )
    print(
        f"| gate, images/s ({args.images} images, 64 per forward) | {args.images / single_s:.1f} | "
        f"{args.images / gate_batched_s:.1f} | {single_s / gate_batched_s:.1f}x |"
    )


if __name__ == "__main__":
    main()
