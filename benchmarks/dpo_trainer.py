"""Our DPO trainer step against the release's strategy, same model, same batch, one run.

- ours: ``dpo.trainer.dpo_step`` — reference = the same UNet with adapters disabled, VAE latents and
  text embeddings read from the cache (the one-time encoding is timed separately);
- release: a second full UNet copy as the reference, and the VAE encoder and text encoder run on
  every step (as the release's train.py does).

Both take LoRA r=4 on to_q/to_k/to_v/to_out.0, AdamW, the same loss. Each strategy runs in its own
child process so its peak memory is its own: peak RSS on CPU, ``torch.cuda.max_memory_allocated``
on a GPU.

    python benchmarks/dpo_trainer.py [--shape tiny|sd15] [--resolution 32] [--batch 4] [--steps 20] [--device cpu|cuda]

``--shape sd15`` builds SD1.5-shaped random weights from configs (UNet 860M, VAE, CLIP-L text encoder);
use it with ``--device cuda --resolution 512`` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel

from coprov2.tiny import clip_tokenizer, write_tiny_models
from dpo.config import DPOConfig
from dpo.encode import EncodedPairs
from dpo.loss import diffusion_dpo_loss
from dpo.trainer import dpo_step

SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    sample_size=64,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)


def build_models(shape: str):
    """UNet, VAE, text encoder, tokenizer and noise schedule of the requested shape, random weights."""
    tokenizer = clip_tokenizer()
    if shape == "tiny":
        folder = write_tiny_models(tempfile.mkdtemp(prefix="bench-dpo-"), ["sd15"])["sd15"]
        return (
            UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
            tokenizer,
            DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        )
    text = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return (
        UNet2DConditionModel(**SD15_UNET),
        AutoencoderKL(**SD15_VAE),
        CLIPTextModel(text),
        tokenizer,
        schedule,
    )


def run_strategy(args) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet, vae, text_encoder, tokenizer, schedule = build_models(args.shape)
    config = DPOConfig(train_batch_size=args.batch, proportion_empty_prompts=0.0, progress=False)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
        model.to(device, dtype)
    pixels = (
        torch.rand(
            2, args.pairs, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0)
        )
        * 2
        - 1
    )
    captions = [f"a photo of a knife number {i} on a table" for i in range(args.pairs)]
    tokens = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    scaling = vae.config.scaling_factor

    def encode(rows):
        with torch.no_grad():
            w = vae.encode(pixels[0, rows].to(device, dtype)).latent_dist
            lo = vae.encode(pixels[1, rows].to(device, dtype)).latent_dist
            text = text_encoder(tokens[rows].to(device))[0]
        return w, lo, text

    encode_seconds = 0.0
    reference = None
    if args.strategy == "ours":
        start = time.perf_counter()
        parts = [
            encode(list(range(i, min(i + args.batch, args.pairs)))) for i in range(0, args.pairs, args.batch)
        ]
        encoded = EncodedPairs(
            winner_mean=torch.cat([p[0].mean for p in parts]).float().cpu(),
            winner_std=torch.cat([p[0].std for p in parts]).float().cpu(),
            loser_mean=torch.cat([p[1].mean for p in parts]).float().cpu(),
            loser_std=torch.cat([p[1].std for p in parts]).float().cpu(),
            text=torch.cat([p[2] for p in parts]).float().cpu(),
            empty_text=parts[0][2][0].float().cpu(),
        )
        encode_seconds = time.perf_counter() - start
        del vae, text_encoder
    else:
        reference = copy.deepcopy(unet)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=config.target_modules)
    )
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def release_step(rows, generator):
        w, lo, text = encode(rows)
        latents = torch.cat([w.sample(generator), lo.sample(generator)]) * scaling
        noise = torch.randn(
            latents[: len(rows)].shape, generator=generator, device=device, dtype=dtype
        ).repeat(2, 1, 1, 1)
        timesteps = torch.randint(0, 1000, (len(rows),), device=device).repeat(2)
        noisy = schedule.add_noise(latents, noise, timesteps)
        inputs = (noisy, timesteps, text.repeat(2, 1, 1))
        with torch.no_grad():
            ref_pred = reference(*inputs).sample
        return diffusion_dpo_loss(unet(*inputs).sample, ref_pred, noise, config.beta)

    def step(index: int) -> None:
        rows = [(index * args.batch + i) % args.pairs for i in range(args.batch)]
        generator = torch.Generator(device if args.strategy == "release" else "cpu").manual_seed(index)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            if args.strategy == "ours":
                output = dpo_step(unet, schedule, encoded, rows, generator, config, device, scaling)
            else:
                output = release_step(rows, generator)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(2):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(args.steps):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "strategy": args.strategy,
        "pairs_per_s": args.steps * args.batch / seconds,
        "peak_mib": peak,
        "encode_once_s": encode_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategy", choices=("ours", "release"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        print(json.dumps(run_strategy(args)))
        return
    results = {}
    for strategy in ("ours", "release"):
        command = [sys.executable, __file__, *sys.argv[1:], "--strategy", strategy]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[strategy] = json.loads(output.strip().splitlines()[-1])
    ours, release = results["ours"], results["release"]
    memory = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(
        f"shape {args.shape}, {args.resolution} px, batch {args.batch} pairs, {args.steps} steps, {args.device}"
    )
    print(f"{'':10} {'pairs/s':>10} {memory:>14}")
    for name, r in results.items():
        print(f"{name:10} {r['pairs_per_s']:10.2f} {r['peak_mib']:14.0f}")
    print(
        f"ours / release: {ours['pairs_per_s'] / release['pairs_per_s']:.2f}x pairs/s, "
        f"{ours['peak_mib'] / release['peak_mib']:.2f}x peak memory; "
        f"one-time encoding of {args.pairs} pairs: {ours['encode_once_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
