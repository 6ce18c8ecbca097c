"""Why single toy experts drift on neutral captions: where the LoRA sits, and what the measure counts.

In the known-answer toy world (``dpo.toy.make_toy_world``, 2 torch threads as the tests), one expert per
seed is trained on concept 0 (``dpo.toy.train_toy_expert``, 300 steps) for each placement:

- ``all``: the release's four projections of every attention (``to_q to_k to_v to_out.0``);
- ``cross``: cross-attention keys and values only (``attn2.to_k attn2.to_v``, MACE's and UCE's choice).

Measured on the neutral captions' samples (same seeds before and after), beside the trained captions':

- ``drift``: the merge benchmark's measure, the mean latent distance of each sample to its base twin;
- ``flips``: the share of neutral samples whose nearest neutral colour (the base renders each neutral
  caption in two colours, half and half) changed: a sample that changes mode moves by the whole distance
  between the two colours, so a few flips make a large drift;
- ``shift``: the distance between the mean neutral latent before and after (a colour shift of everything
  moves it; flips both ways cancel);
- the reference, in the same run: ``floor`` = the drift between two sets of base samples with other seeds
  (what "every sample changed" measures), and the trained captions' own drift and gain.

    python benchmarks/toy_drift.py --seeds 0 1 2 --out /tmp/toy-drift
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from dpo.config import PLACEMENTS
from dpo.toy import (
    NEUTRAL_CAPTIONS,
    NEUTRAL_COLOURS,
    colour_centroid,
    displacement,
    make_toy_world,
    safe_share,
    sample_latents,
    share_closer,
    train_toy_expert,
)


def measure(world, seed: int, placement: str, out: Path) -> dict[str, float]:
    root, concept, base, data = world
    path = out / f"seed-{seed}-{placement}.json"
    if path.is_file():
        return json.loads(path.read_text())
    name = f"drift-{placement}-seed-{seed}"
    result = train_toy_expert(
        root, concept, base, data, name, seed=seed, target_modules=PLACEMENTS[placement]
    )
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    trained, neutral = [concept.captions[0], concept.held_out[0]], NEUTRAL_CAPTIONS
    before = sample_latents(pipe, trained), sample_latents(pipe, neutral)
    floor = displacement(before[1], sample_latents(pipe, neutral, seed=1000))
    pipe.load_lora_weights(result.output_dir)
    after = sample_latents(pipe, trained), sample_latents(pipe, neutral)
    grey, green = (colour_centroid(pipe, c) for c in NEUTRAL_COLOURS)
    mode = [(x - grey).norm(dim=1) < (x - green).norm(dim=1) for x in (before[1], after[1])]
    row = {
        "seed": seed,
        "placement": placement,
        "gain": safe_share(pipe, after[0], concept) - safe_share(pipe, before[0], concept),
        "moved_trained": displacement(before[0], after[0]),
        "drift": displacement(before[1], after[1]),
        "flips": (mode[0] != mode[1]).float().mean().item(),
        "shift": (after[1].mean(0) - before[1].mean(0)).norm().item(),
        "floor": floor,
        "grey_share_before": share_closer(before[1], grey, green),
    }
    path.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the tests': 2)")
    parser.add_argument("--out", type=Path, default=Path("toy-drift"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    world = make_toy_world(args.out / f"world-threads-{args.threads}")
    rows = [measure(world, seed, placement, args.out) for placement in PLACEMENTS for seed in args.seeds]
    columns = ["gain", "moved_trained", "drift", "flips", "shift", "floor"]
    print("| placement | seed | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for placement in PLACEMENTS:
        mine = [r for r in rows if r["placement"] == placement]
        for row in mine:
            print(f"| {placement} | {row['seed']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
        means = " | ".join(f"{statistics.mean(r[c] for r in mine):.3f}" for c in columns)
        print(f"| {placement} | mean | {means} |")


if __name__ == "__main__":
    main()
