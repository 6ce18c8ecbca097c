"""Flow-DPO's step against its floor, and the GPU memory plan for FLUX.1-dev and SD3.5 Large.

The floor of a DPO step is three transformer passes over the same batch: the reference's forward (adapters
off, inference mode), the model's forward and its backward. This times, on the same inputs and in the same
process, (a) ``dpo.trainer.dpo_step`` + backward (what the trainer runs, its draws, its family calls and its loss
included) against (b) the floor: one inference-mode forward and one forward+backward of a plain MSE, with no
draws, no packing outside the model and no loss bookkeeping. Shapes: the tiny FLUX/SD3 pipelines, and
FLUX.1-dev- and SD3.5-Large-shaped slices (their real widths, head counts, text widths and pooled widths, a few
blocks) at a small resolution so a CPU runs them. Peak memory is the peak RSS of a process that runs that
shape alone (each shape runs in its own process).

The memory plan scales the slices' parameter counts per block to the real block counts (FLUX.1-dev: 19
double- and 38 single-stream blocks; SD3.5 Large: 38 joint blocks) and adds, with gradient checkpointing, one
saved block input per block and sample (tokens x width x 2 bytes, bf16) plus one block's recomputed
activations (measured here as the slice's peak activation bytes per block, scaled by tokens): an estimate,
until a GPU run measures it (none was lent when this was written)::

    python benchmarks/flow_dpo_cost.py --shapes tiny-flux tiny-sd3 flux-slice sd35-slice --steps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from peft import LoraConfig

from dpo.config import DPOConfig
from dpo.encode import EncodedPairs
from dpo.families.flux import FluxFamily
from dpo.families.sd3 import SD3Family
from dpo.loss import per_sample_mse
from dpo.trainer import dpo_step

#: Real configs (diffusers' transformer configs of the Hub checkpoints), sliced to a few blocks.
SHAPES = {
    "flux-slice": ("flux", dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=128,
                                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
    "sd35-slice": ("sd3", dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                               attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                               caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                               qk_norm="rms_norm")),
}  # fmt: skip
#: Blocks of the real models: (double-stream or joint, single-stream).
REAL_BLOCKS = {"flux-slice": (19, 38), "sd35-slice": (38, 0)}


def build(shape: str):
    """``(family, transformer, latent channels)`` for a shape, random weights, seeded."""
    torch.manual_seed(0)
    if shape.startswith("tiny-"):
        from coprov2.tiny import build

        pipe = build(shape.removeprefix("tiny-"))
        family = FluxFamily() if shape == "tiny-flux" else SD3Family()
        return family, pipe.transformer, pipe.vae.config.latent_channels
    kind, config = SHAPES[shape]
    if kind == "flux":
        from diffusers import FluxTransformer2DModel

        return FluxFamily(), FluxTransformer2DModel(**config), config["in_channels"] // 4
    from diffusers import SD3Transformer2DModel

    return SD3Family(), SD3Transformer2DModel(**config), config["in_channels"]


def run(shape: str, args) -> dict:
    family, model, channels = build(shape)
    config = DPOConfig(
        train_batch_size=args.batch, proportion_empty_prompts=0.0, max_sequence_length=args.text_tokens
    )
    family = family.configure({"scaling_factor": 1.0}, config)
    config = config.for_family(family)
    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=config.target_modules)
    )
    model.train()
    side = args.latent
    text_width = model.config.joint_attention_dim
    pooled_width = model.config.pooled_projection_dim
    n = args.batch
    g = torch.Generator().manual_seed(0)
    encoded = EncodedPairs(
        winner_mean=torch.randn(n, channels, side, side, generator=g), winner_std=torch.zeros(n, channels, side, side),
        loser_mean=torch.randn(n, channels, side, side, generator=g), loser_std=torch.zeros(n, channels, side, side),
        text=torch.randn(n, args.text_tokens, text_width, generator=g), empty_text=torch.zeros(args.text_tokens, text_width),
        pooled=torch.randn(n, pooled_width, generator=g), empty_pooled=torch.zeros(pooled_width),
    )  # fmt: skip
    scheduler = _scheduler(family)
    rows = list(range(n))
    cpu = torch.device("cpu")

    def ours() -> None:
        output = dpo_step(
            model, family, scheduler, encoded, rows, torch.Generator().manual_seed(1), config, cpu
        )
        output.loss.backward()

    from dpo.families import Conditioning

    latents = torch.randn(2 * n, channels, side, side, generator=g)
    t = torch.full((2 * n,), 500.0)
    cond = Conditioning(encoded.text[rows].repeat(2, 1, 1), encoded.pooled[rows].repeat(2, 1))

    def floor() -> None:
        with torch.inference_mode():
            model.disable_adapters()
            family.predict(model, latents, t, cond, torch.float32)
            model.enable_adapters()
        per_sample_mse(family.predict(model, latents, t, cond, torch.float32), latents).mean().backward()

    times = {"ours": [], "floor": []}
    for step in range(args.steps + 1):  # the first of each is a warm-up
        for name, function in (
            (("ours", ours), ("floor", floor)) if step % 2 else (("floor", floor), ("ours", ours))
        ):
            started = time.perf_counter()
            function()
            model.zero_grad(set_to_none=True)
            if step:
                times[name].append(time.perf_counter() - started)
    blocks = [
        m for n_, m in model.named_children() if n_ in ("transformer_blocks", "single_transformer_blocks")
    ]
    per_block = [sum(p.numel() for p in group[0].parameters()) for group in blocks]
    return {
        "shape": shape,
        "ours_s": statistics.median(times["ours"]),
        "floor_s": statistics.median(times["floor"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in model.parameters()),
        "params_per_block": per_block,
        "width": model.config.num_attention_heads * model.config.attention_head_dim,
    }


def _scheduler(family):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=family.name == "flux")


def memory_plan(result: dict) -> list[str]:
    """bf16 weights of the real depth, LoRA + AdamW, checkpointed block inputs per pair (2 rows), at 512 and 1024 px."""
    double, single = REAL_BLOCKS[result["shape"]]
    per = result["params_per_block"]
    shared = result["params"] - sum(
        p * c for p, c in zip(per, (1 if double else 0, 2 if single else 0), strict=False)
    )
    shared = max(shared, 0)
    total = shared + per[0] * double + (per[1] * single if single else 0)
    lines = []
    for px in (512, 1024):
        tokens = (px // 16) ** 2 + (512 if result["shape"].startswith("flux") else 333)
        checkpoint = 2 * tokens * result["width"] * 2 * (double + single)  # per pair: 2 rows, bf16
        weights = 2 * total
        lines.append(
            f"| {result['shape'].removesuffix('-slice')} | {px} | {total / 1e9:.1f} B | {weights / 2**30:.1f} GiB | "
            f"{checkpoint / 2**30:.2f} GiB | {int((80 * 2**30 - weights - 6 * 2**30) // checkpoint)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny-flux", "tiny-sd3", "flux-slice", "sd35-slice"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="pairs per step (2 rows each)")
    parser.add_argument("--latent", type=int, default=16, help="latent side (16: 128 px at VAE factor 8)")
    parser.add_argument("--text_tokens", type=int, default=64)
    parser.add_argument("--_json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._json:  # one shape, in this process: its peak RSS is that shape's alone
        print(json.dumps(run(args.shapes[0], args)))
        return
    print("| shape | ours (s) | floor (s) | ratio | peak RSS (MiB) | params |\n|---|---|---|---|---|---|")
    plans = []
    for shape in args.shapes:
        flags = ["--steps", str(args.steps), "--batch", str(args.batch), "--latent", str(args.latent)]
        flags += ["--text_tokens", str(args.text_tokens)]
        command = [sys.executable, __file__, "--shapes", shape, *flags, "--_json"]
        r = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        print(f"| {shape} | {r['ours_s']:.3f} | {r['floor_s']:.3f} | {r['ours_s'] / r['floor_s']:.2f}x | "
              f"{r['peak_rss_mib']:.0f} | {r['params'] / 1e6:.1f} M |", flush=True)  # fmt: skip
        if shape in REAL_BLOCKS:
            plans += memory_plan(r)
    if plans:
        print(
            "\n| model | px | params | bf16 weights | checkpointed block inputs per pair | pairs per micro-batch on 80 GB, "
            "estimated (6 GiB assumed for LoRA, AdamW, one recomputed block's activations) |\n|---|---|---|---|---|---|"
        )
        print("\n".join(plans))


if __name__ == "__main__":
    main()
