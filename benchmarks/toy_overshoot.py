"""Where a toy expert puts its samples: along the unsafe -> safe line, and how far off it.

The known answer's gain counts a sample as safe when its latent is nearer the concept's safe-colour centroid
than its unsafe one (``dpo.toy.safe_share``); the evaluation's detector judges the rendered image. A sample far
off the line between the two centroids can count as safe in latent space yet decode to something the detector
calls unsafe. Per model, over ``--samples`` samples of the concept's first caption (``dpo.toy.sample_latents``):

- ``t``: the projection on the line, 0 at the unsafe centroid and 1 at the safe one (quantiles 10-90%);
- ``off``: the median distance to the line, in centroid distances.

The reference, in the same run: the toy data itself, 32 fresh noisy images of each colour encoded by the base's
VAE (``t`` about 0 and 1, ``off`` the data's own spread)::

    python benchmarks/known_answers.py --base rebuilt --out /tmp/ka          # with ATEN_CPU_CAPABILITY=default
    python benchmarks/toy_overshoot.py /tmp/ka/world-rebuilt-default-threads-1/base \\
        /tmp/ka/world-rebuilt-default-threads-1/expert-seed-*
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from dpo.toy import _encode, colour_centroid, colour_pixels, sample_latents, toy_concepts

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def placement(latents: torch.Tensor, unsafe: torch.Tensor, safe: torch.Tensor) -> tuple[list[float], float]:
    """Quantiles of the projection on the unsafe -> safe line and the median distance off it, both in
    centroid distances."""
    axis = safe - unsafe
    length = axis.norm()
    t = (latents - unsafe) @ axis / length**2
    off = ((latents - unsafe) - t[:, None] * axis).norm(dim=1) / length
    return t.quantile(torch.tensor(QUANTILES)).tolist(), off.median().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("experts", type=Path, nargs="*", help="LoRA folders of the base's concept-0 experts")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    concept = toy_concepts(1)[0]
    pipe = DiffusionPipeline.from_pretrained(str(args.base))
    pipe.set_progress_bar_config(disable=True)
    unsafe, safe = colour_centroid(pipe, concept.unsafe_colour), colour_centroid(pipe, concept.safe_colour)
    rows = []
    for name, colour in (
        ("data: unsafe images", concept.unsafe_colour),
        ("data: safe images", concept.safe_colour),
    ):
        images = colour_pixels(colour, 32, torch.Generator().manual_seed(1))
        rows.append((name, *placement(_encode(pipe, images).flatten(1), unsafe, safe)))
    rows.append(("base", *placement(sample_latents(pipe, [concept.captions[0]], args.samples), unsafe, safe)))
    for expert in args.experts:
        pipe.load_lora_weights(str(expert))
        latents = sample_latents(pipe, [concept.captions[0]], args.samples)
        rows.append((expert.name, *placement(latents, unsafe, safe)))
        pipe.unload_lora_weights()
    print(f"centroid distance: {(safe - unsafe).norm().item():.3f}")
    print("| model | t " + " / ".join(f"{q:.0%}" for q in QUANTILES) + " | off the line (median) |")
    print("|---|---|---|")
    for name, t, off in rows:
        print(f"| {name} | " + " / ".join(f"{x:.2f}" for x in t) + f" | {off:.2f} |")


if __name__ == "__main__":
    main()
