"""Why single toy experts drift on neutral captions: the measure, the adapted layers, the text space.

One expert per (seed, concept, placement) is trained with the known-answer settings
(``dpo.toy.train_toy_expert``, without the output-preserving term, as ``merge_scaling.py``'s experts) in a
toy world built like ``benchmarks/merge_scaling.py``'s (``--concepts`` concepts, base pretrained
``--base-steps`` steps), for each placement:

- ``all``: the release's four projections of every attention (``to_q to_k to_v to_out.0``);
- ``cross``: cross-attention keys and values only (``attn2.to_k attn2.to_v``, MACE's and UCE's choice).

Measured on the neutral captions' samples (same seeds before and after), beside the trained captions':

- ``drift``: the merge benchmark's measure, the mean latent distance of each sample to its base twin;
- ``flips``: share of neutral samples whose nearest neutral colour changed (the base renders each
  neutral caption in two colours); ``drift_kept``: the drift of the samples that did not flip. If
  mode flips made the drift, ``drift_kept`` would be far below ``drift``;
- ``drift_self`` / ``drift_cross`` (``all`` only): the drift with only the self-attention (``attn1``) or
  only the cross-attention (``attn2``) half of the LoRA loaded: the tiny UNet's first transformer block
  sees no text before its self-attention, so that half cannot tell captions apart;
- ``leak``: for the cross-attention key/value LoRAs, the mean norm of ``B A x`` over the neutral captions'
  token states over the same on the trained captions' (0: the change reads only the trained captions);
  ``leak_random_a``: the same with each ``A`` replaced by a fresh draw of its initialisation, the value of
  a LoRA whose down projection learnt nothing about which captions to read;
- the reference, in the same run: ``floor`` = the drift between two sets of base samples drawn with
  other seeds (what "every sample changed" measures), and the trained captions' gain and movement.

``--text-width`` builds the world's base with a wider text space (``dpo.toy.widen_text_space``); the
before/after of the toy fix is two runs side by side, the tiny pipeline's 32 and the toy's width:

    python benchmarks/toy_drift.py --text-width 32 --out /tmp/toy-drift
    python benchmarks/toy_drift.py --out /tmp/toy-drift
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

from coprov2.tiny import resolve_tiny_model
from dpo.config import PLACEMENT_NAMES
from dpo.toy import (
    NEUTRAL_CAPTIONS,
    NEUTRAL_COLOURS,
    colour_centroid,
    displacement,
    leak,
    pretrain_toy_base,
    safe_share,
    sample_latents,
    text_states,
    toy_concepts,
    train_toy_expert,
    write_toy_dataset,
)

COLUMNS = [
    "gain",
    "moved_trained",
    "drift",
    "flips",
    "drift_kept",
    "drift_self",
    "drift_cross",
    "leak",
    "leak_random_a",
    "floor",
]


def drift_of_part(pipe, lora: dict[str, torch.Tensor], part: str, before: torch.Tensor) -> float:
    """Neutral drift with only the LoRA weights whose names hold ``part`` loaded."""
    with tempfile.TemporaryDirectory() as folder:
        save_file({k: v for k, v in lora.items() if part in k}, f"{folder}/pytorch_lora_weights.safetensors")
        pipe.load_lora_weights(folder)
        after = sample_latents(pipe, NEUTRAL_CAPTIONS)
        pipe.unload_lora_weights()
    return displacement(before, after)


def measure(root: Path, concepts, base: Path, data: Path, k: int, seed: int, placement: str) -> dict:
    path = root / f"concept-{k}-seed-{seed}-{placement}.json"
    if path.is_file():
        return json.loads(path.read_text())
    concept = concepts[k]
    result = train_toy_expert(
        root, concept, base, data, f"expert-{k}-{placement}-seed-{seed}", seed=seed,
        target_modules=[placement], retain_weight=0.0,  # the drift of DPO alone, as merge_scaling's experts
    )  # fmt: skip
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    trained = [concept.captions[0], concept.held_out[0]]
    before = sample_latents(pipe, trained), sample_latents(pipe, NEUTRAL_CAPTIONS)
    floor = displacement(before[1], sample_latents(pipe, NEUTRAL_CAPTIONS, seed=1000))
    lora = load_file(str(Path(result.output_dir) / "pytorch_lora_weights.safetensors"))
    parts = {}
    if placement == "all":
        parts = {
            f"drift_{name}": drift_of_part(pipe, lora, part, before[1])
            for name, part in [("self", "attn1"), ("cross", "attn2")]
        }
    pipe.load_lora_weights(result.output_dir)
    after = sample_latents(pipe, trained), sample_latents(pipe, NEUTRAL_CAPTIONS)
    grey, green = (colour_centroid(pipe, c) for c in NEUTRAL_COLOURS)
    mode = [(x - grey).norm(dim=1) < (x - green).norm(dim=1) for x in (before[1], after[1])]
    kept = mode[0] == mode[1]
    row = {
        "concept": k, "seed": seed, "placement": placement,
        "gain": safe_share(pipe, after[0], concept) - safe_share(pipe, before[0], concept),
        "moved_trained": displacement(before[0], after[0]),
        "drift": displacement(before[1], after[1]),
        "flips": 1 - kept.float().mean().item(),
        "drift_kept": displacement(before[1][kept], after[1][kept]),
        "drift_self": float("nan"), "drift_cross": float("nan"), **parts,
        "floor": floor,
    }  # fmt: skip
    path.write_text(json.dumps(row, indent=2))
    return row


def with_leak(row: dict, root: Path, pipe, concepts) -> dict:
    """``row`` with its expert's ``leak`` and ``leak_random_a`` (cheap, computed on every report)."""
    expert = root / f"expert-{row['concept']}-{row['placement']}-seed-{row['seed']}"
    lora = load_file(str(expert / "pytorch_lora_weights.safetensors"))
    states = text_states(pipe, list(concepts[row["concept"]].captions)), text_states(pipe, NEUTRAL_CAPTIONS)
    return {**row, "leak": leak(lora, *states), "leak_random_a": leak(lora, *states, random_down=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--concept-ids", type=int, nargs="+", default=[0, 7], help="whose experts to train")
    parser.add_argument(
        "--concepts", type=int, default=28, help="concepts of the world (merge_scaling's: 28)"
    )
    parser.add_argument("--base-steps", type=int, default=2000, help="pretraining steps (merge_scaling's)")
    parser.add_argument("--text-width", type=int, default=32, help="text space of the base (tiny: 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("toy-drift"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = (
        args.out
        / f"world-{args.concepts}-steps-{args.base_steps}-text-{args.text_width}-threads-{args.threads}"
    )
    root.mkdir(parents=True, exist_ok=True)
    concepts = toy_concepts(args.concepts)
    tiny = resolve_tiny_model("tiny:sd15", root / "tiny")
    base = pretrain_toy_base(tiny, root / "base", concepts, steps=args.base_steps, text_width=args.text_width)
    data = root / "data"
    if not data.exists():
        write_toy_dataset(data, concepts)
    pipe = DiffusionPipeline.from_pretrained(str(base))
    rows = [
        with_leak(measure(root, concepts, base, data, k, seed, placement), root, pipe, concepts)
        for placement in PLACEMENT_NAMES for k in args.concept_ids for seed in args.seeds
    ]  # fmt: skip
    print(f"text width {args.text_width}, {args.concepts} concepts, base {args.base_steps} steps")
    print(
        "| placement | concept | seed | " + " | ".join(COLUMNS) + " |\n|---|---|---|" + "---|" * len(COLUMNS)
    )
    for placement in PLACEMENT_NAMES:
        mine = [r for r in rows if r["placement"] == placement]
        for row in mine:
            cells = " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
            print(f"| {placement} | {row['concept']} | {row['seed']} | {cells} |")
        means = " | ".join(f"{statistics.fmean(r[c] for r in mine):.3f}" for c in COLUMNS)
        print(f"| {placement} | mean | | {means} |")
    (root / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
