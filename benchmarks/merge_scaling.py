"""Merging N safety experts (N = 2..7) in the toy world: removal per concept and drift, per method, one run.

The toy world (``dpo/toy.py``): 7 concepts, each with its own captions and an unsafe -> safe colour;
a tiny base pipeline trained to render both colours of every concept (and of neutral captions)
about half and half. One expert per concept is trained with ``dpo/``; for each N the first N
experts are merged with every method of ``merge/``, beside each single expert on its own concept
and All-single (one expert trained on the N concepts together, N x ``--steps-per-concept`` steps).

Reported per (method, N): removal = mean over the N concepts of the share of samples on the safe
side (held-out and training captions, fixed seeds); drift = mean distance, in latent space, between
samples of neutral captions drawn with the same seeds before and after (0 = untouched).

    python benchmarks/merge_scaling.py [--max-concepts 7] [--steps 300] [--samples 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from coprov2.tiny import resolve_tiny_model
from dpo import DPOConfig, train_expert
from dpo.toy import (
    NEUTRAL_CAPTIONS,
    TOY_RESOLUTION,
    displacement,
    pretrain_toy_base,
    safe_share,
    sample_latents,
    toy_concepts,
    write_toy_dataset,
)
from merge import METHODS, MergeConfig, run_merge


def expert_config(data: Path, category: str, base: Path, out: Path, cache: Path, steps: int) -> DPOConfig:
    """The known-answer test's settings (tests/test_dpo.py)."""
    return DPOConfig(
        dataset=str(data), category=category, base=str(base), output_dir=str(out), cache_dir=str(cache),
        resolution=TOY_RESOLUTION, max_train_steps=steps, train_batch_size=8, gradient_accumulation_steps=1,
        lr_warmup_steps=0, learning_rate=3e-3, scale_lr=False, timestep_min=500, beta=5000,
        proportion_empty_prompts=0.0, checkpointing_steps=10**6, logging_steps=50, progress=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-concepts", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300, help="DPO steps per expert")
    parser.add_argument("--steps-per-concept", type=int, default=150, help="All-single steps per concept")
    parser.add_argument("--samples", type=int, default=16, help="samples per caption")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.out or tempfile.mkdtemp(prefix="merge-scaling-"))
    cache = root / "cache"
    start = time.perf_counter()
    concepts = toy_concepts(args.max_concepts)
    base = pretrain_toy_base(
        resolve_tiny_model("tiny:sd15", root / "tiny"), root / "base", concepts, steps=900
    )
    data = write_toy_dataset(root / "data", concepts)
    experts = []
    for concept in concepts:
        out = root / "experts" / concept.name
        if not (out / "pytorch_lora_weights.safetensors").exists():
            train_expert(expert_config(data, concept.name, base, out, cache, args.steps))
        experts.append(out)
    print(f"base and {len(experts)} experts ready in {time.perf_counter() - start:.0f} s", flush=True)

    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)

    def measure(lora: Path | None, n: int) -> tuple[list[float], float]:
        if lora is not None:
            pipe.load_lora_weights(str(lora))
        shares = [
            safe_share(pipe, sample_latents(pipe, [c.captions[0], c.held_out[0]], args.samples), c)
            for c in concepts[:n]
        ]
        neutral = sample_latents(pipe, NEUTRAL_CAPTIONS, args.samples)
        if lora is not None:
            pipe.unload_lora_weights()
        return shares, displacement(neutral_base, neutral)

    neutral_base = sample_latents(pipe, NEUTRAL_CAPTIONS, args.samples)
    base_shares, _ = measure(None, args.max_concepts)
    single = [measure(expert, args.max_concepts)[0][k] for k, expert in enumerate(experts)]
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for n in range(2, args.max_concepts + 1):
        subset = write_toy_dataset(root / f"data-{n}", concepts[:n])
        all_single = root / f"all-single-{n}"
        if not (all_single / "pytorch_lora_weights.safetensors").exists():
            train_expert(expert_config(subset, "all", base, all_single, cache, args.steps_per_concept * n))
        shares, drift = measure(all_single, n)
        rows.setdefault("all-single", {})[n] = (sum(shares) / n, drift)
        for method in METHODS:
            out = root / f"merged-{method}-{n}"
            run_merge(
                MergeConfig(
                    experts=[str(e) for e in experts[:n]],
                    base=str(base),
                    method=method,
                    output_dir=str(out),
                    calibration=str(subset),
                    calibration_per_category=4,
                    resolution=TOY_RESOLUTION,
                    cache_dir=str(cache),
                    progress=False,
                )
            )
            shares, drift = measure(out, n)
            rows.setdefault(method, {})[n] = (sum(shares) / n, drift)
        print(f"N={n} done at {time.perf_counter() - start:.0f} s", flush=True)

    ns = list(range(2, args.max_concepts + 1))
    print(f"\nremoval (share of samples on the safe side, mean over the N concepts); base: "
          f"{' '.join(f'{s:.2f}' for s in base_shares)}")  # fmt: skip
    print("single expert on its own concept: " + " ".join(f"{s:.2f}" for s in single))
    print(f"{'method':12}" + "".join(f"  N={n:<9}" for n in ns))
    print(f"{'base':12}" + "".join(f"  {sum(base_shares[:n]) / n:.2f} (0.00)" for n in ns))
    for name, by_n in rows.items():
        print(f"{name:12}" + "".join(f"  {by_n[n][0]:.2f} ({by_n[n][1]:.2f})" for n in ns))
    print("cells: removal (drift on neutral captions, mean latent distance to the base's samples)")
    single_mean = {n: sum(single[:n]) / n for n in ns}
    print(
        "mean of the single experts on their own concepts: "
        + " ".join(f"N={n}: {single_mean[n]:.2f}" for n in ns)
    )
    (root / "results.json").write_text(
        json.dumps(
            {
                "base": base_shares,
                "single": single,
                "rows": {k: {str(n): v for n, v in d.items()} for k, d in rows.items()},
            },
            indent=2,
        )
    )
    print(f"results in {root / 'results.json'}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
