"""Our DPO training step against the two programs users would otherwise run, same model, same batch.

Three strategies, each in its own child process (its peak memory is its own: peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on a GPU), alternated ``--repeats`` times; medians are reported.

- ``ours-before``: ``ours`` as the trainer was before the speed/memory changes (plain AdamW, the whole
  pipeline, UNet included, in memory while encoding, the reference pass under ``no_grad``), for the
  before/after ratios.
- ``ours``: ``dpo.trainer.dpo_step`` and the trainer's optimizer (``dpo.trainer.make_optimizer``). The
  VAE and text encoder run once over the pairs (both image orientations, as ``--random_flip``
  caches them), then are freed before the UNet is built, as ``dpo.train`` does (it loads the
  pipeline without its UNet to encode); steps read the cached latent mean/std and text embeddings.
  Reference = the same UNet with adapters disabled.
- ``df``: diffusers' ``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`` (DF), re-implemented
  here: the same LoRA UNet with adapters disabled as the reference, the VAE encoder and the text encoder
  run on every step over the batch's images and captions, no flip (DF's ``--random_flip`` is off by default).
- ``release``: the SafetyDPO release's ``train.py``: a second full UNet copy as the reference, VAE encoder
  and text encoder every step, each image flipped at random (its ``--no_hflip`` is off by default).

What one step computes, and how it was matched here:

| | ours | DF | release |
|---|---|---|---|
| timesteps | U[0, 1000) | U[0, 1000) | U[0, 1000) |
| loss | -logsigmoid(-0.5 beta (model gap - ref gap)) | same | same |
| beta | 5000 | 5000 here (DF's default 2500) | 5000 |
| empty-prompt dropout | 0 here (ours 0.2 by default) | 0 (its default) | 0 here (its default 0.2) |
| flip | cached rows | none | pixels flipped before the VAE |
| crop | center | center | center |
| precision | fp32 on CPU, fp16 autocast on GPU | same | same |
| latent | a draw from the cached mean/std | ``latent_dist.sample()`` | ``latent_dist.sample()`` |
| dataloader | none: cached tensors | none here (DF: 0 workers, JPEG decode + resize per step) | none here (4 workers) |

How the re-implementations differ from the real programs: no JPEG decoding, resizing or dataloader
(the real DF and release pay those per step, the release in 4 workers), no accelerate wrapper, no
gradient accumulation or clipping, no xformers (the release requires it on GPU; SDPA is used here).

    python benchmarks/dpo_trainer.py [--shape tiny|sd15] [--resolution 32] [--batch 4] [--steps 20] [--repeats 3] [--device cpu|cuda]
    python benchmarks/dpo_trainer.py --strategies ours ours+retain ours-cross ours-cross+retain-text   # the term's cost

The output-preserving term (``dpo/retain.py``, ``retain_share`` 0.25 of the batch): ``ours+retain`` adds its
retain rows to the step's two UNet calls, ``ours-cross+retain-text`` its closed form on the cross-attention
LoRAs; each is quoted over the same step without it, and the one-time retain set (``--retain_prompts``
captions sampled ``--retain_sample_steps`` steps by the whole pipeline; embeddings only for ``text``) apart.

``--shape sd15`` builds SD1.5-shaped random weights from configs (UNet 860M, VAE, CLIP-L text encoder):
use ``--resolution 128 --batch 1`` on CPU, ``--device cuda --resolution 512`` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel

from coprov2.tiny import clip_tokenizer, write_tiny_models
from dpo.config import DPOConfig
from dpo.encode import EncodedPairs
from dpo.families.unet import UNetFamily
from dpo.loss import diffusion_dpo_loss
from dpo.trainer import dpo_step, make_optimizer

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
STRATEGIES = ("ours-before", "ours", "ours+retain", "ours-cross", "ours-cross+retain-text", "df", "release")
#: The output-preserving term's strategies (``dpo/retain.py``), each against the step it adds to: ``ours+retain``
#: (``--retain_mode unet``, the default placement) against ``ours``; ``ours-cross+retain-text``
#: (``--retain_mode text``) against ``ours-cross`` (LoRAs on ``attn2.to_k attn2.to_v`` only).
RETAIN_BASELINES = {"ours+retain": "ours", "ours-cross+retain-text": "ours-cross"}


def tiny_folder() -> str:
    return str(write_tiny_models(tempfile.mkdtemp(prefix="bench-dpo-"), ["sd15"])["sd15"])


def build_encoders(shape: str, folder: str | None):
    """VAE, text encoder, tokenizer of the requested shape (random weights, seeded)."""
    torch.manual_seed(1)
    tokenizer = clip_tokenizer()
    if shape == "tiny":
        return (
            AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
            tokenizer,
        )
    text = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return AutoencoderKL(**SD15_VAE), CLIPTextModel(text), tokenizer


def build_unet(shape: str, folder: str | None):
    torch.manual_seed(2)
    if shape == "tiny":
        return UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), DDPMScheduler.from_pretrained(
            folder, subfolder="scheduler"
        )
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return UNet2DConditionModel(**SD15_UNET), schedule


def build_retain_set(args, config: DPOConfig, vae, text_encoder, tokenizer, folder, device, dtype):
    """``dpo.retain.cached_retain_set`` on ``--retain_prompts`` of the shipped neutral list, through a
    StableDiffusionPipeline of this shape (``unet`` mode: it samples them; ``text``: embeddings only)."""
    from diffusers import StableDiffusionPipeline

    from dpo.retain import NEUTRAL_PROMPTS, cached_retain_set

    unet, schedule = build_unet(args.shape, folder)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.to(device, dtype), scheduler=schedule,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    prompts = NEUTRAL_PROMPTS.read_text().splitlines()[: args.retain_prompts]
    samples = config.retain_samples if config.retain_mode == "unet" else 0
    with tempfile.TemporaryDirectory() as cache:
        retain = cached_retain_set(lambda: pipe, UNetFamily(), prompts, args.shape, args.resolution, samples,
                                   config.retain_sample_steps, config.retain_guidance, Path(cache), device, False)  # fmt: skip
    return retain  # the sampling UNet goes with the pipeline, before the training UNet is built


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_strategy(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    folder = tiny_folder() if args.shape == "tiny" else None
    retain_mode = "text" if args.strategy.endswith("retain-text") else "unet"
    config = DPOConfig(
        train_batch_size=args.batch, proportion_empty_prompts=0.0, progress=False, beta=5000,
        target_modules=["cross" if "cross" in args.strategy else "all"],
        retain_weight=1.0 if "retain" in args.strategy else 0.0, retain_mode=retain_mode,
        retain_sample_steps=args.retain_sample_steps, retain_guidance=7.5,
    ).for_family(UNetFamily())  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, args.pairs, 3, args.resolution, args.resolution, generator=generator) * 2 - 1
    captions = [f"a photo of a knife number {i} on a table" for i in range(args.pairs)]
    vae, text_encoder, tokenizer = build_encoders(args.shape, folder)
    for model in (vae, text_encoder):
        model.requires_grad_(False).to(device, dtype)
    tokens = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    scaling = vae.config.scaling_factor

    phases: dict[str, float] = {}

    def timed(phase: str, function, *args):
        """Run ``function`` and add its wall time to ``phase`` (the profile of one step)."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start
        return result

    def encode(images: torch.Tensor, rows: list[int]):
        with torch.no_grad():
            latent = timed("vae encoder", lambda: vae.encode(images.to(device, dtype)).latent_dist)
            return latent, timed("text encoder", lambda: text_encoder(tokens[rows].to(device))[0])

    encode_seconds = 0.0
    ours = args.strategy.startswith("ours")
    if args.strategy == "ours-before":  # dpo.train before this change loaded the whole pipeline to encode
        torch.inference_mode = torch.no_grad  # and ran the reference pass under no_grad (this child only)
        held_unet = build_unet(args.shape, folder)[0].to(device, dtype)
    if ours:  # encode once (both orientations), free the encoders, then build the UNet
        start = time.perf_counter()
        parts = {name: [] for name in ("winner_mean", "winner_std", "loser_mean", "loser_std", "text")}
        for flip in (False, True):
            for i in range(0, args.pairs, args.batch):
                rows = list(range(i, min(i + args.batch, args.pairs)))
                for side, key in ((0, "winner"), (1, "loser")):
                    images = pixels[side, rows].flip(-1) if flip else pixels[side, rows]
                    latent, text = encode(images, rows)
                    parts[f"{key}_mean"].append(latent.mean.float().cpu())
                    parts[f"{key}_std"].append(latent.std.float().cpu())
                    if not flip and side == 0:
                        parts["text"].append(text.float().cpu())
        empty = text_encoder(
            tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
        )[0]
        encoded = EncodedPairs(
            **{k: torch.cat(v) for k, v in parts.items()}, empty_text=empty[0].float().cpu(), flipped=True
        )
        encode_seconds = time.perf_counter() - start
        retain, retain_seconds = None, 0.0
        if config.retain_weight > 0:  # the trainer's one-time retain set: the whole pipeline samples it
            start = time.perf_counter()
            retain = build_retain_set(args, config, vae, text_encoder, tokenizer, folder, device, dtype)
            retain_seconds = time.perf_counter() - start
        del vae, text_encoder, parts
        if args.strategy == "ours-before":
            del held_unet
        gc.collect()
    unet, schedule = build_unet(args.shape, folder)
    unet.requires_grad_(False).to(device, dtype)
    reference = copy.deepcopy(unet) if args.strategy == "release" else None
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=config.target_modules)
    )
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    params = [p for p in unet.parameters() if p.requires_grad]
    if args.strategy == "ours":  # "ours-before": the plain AdamW the trainer used before this change
        optimizer = make_optimizer(params, 1e-5, config.adam_weight_decay, device)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=config.adam_weight_decay)

    def peer_step(rows: list[int], step_generator: torch.Generator):
        images = pixels[:, rows]
        if args.strategy == "release":  # torchvision's RandomHorizontalFlip, per image
            flips = torch.rand(2, len(rows), generator=step_generator) < 0.5
            images = torch.where(flips[:, :, None, None, None], images.flip(-1), images)
        winner, text = encode(images[0], rows)
        loser, _ = encode(images[1], rows)
        latents = torch.cat([winner.sample(), loser.sample()]) * scaling
        noise = torch.randn(latents[: len(rows)].shape, device=device, dtype=dtype).repeat(2, 1, 1, 1)
        timesteps = torch.randint(0, 1000, (len(rows),), device=device).repeat(2)
        inputs = (schedule.add_noise(latents, noise, timesteps), timesteps, text.repeat(2, 1, 1))
        with torch.no_grad():
            if reference is not None:
                ref_pred = reference(*inputs).sample
            else:
                unet.disable_adapters()
                ref_pred = unet(*inputs).sample
                unet.enable_adapters()
        return diffusion_dpo_loss(unet(*inputs).sample, ref_pred, noise, config.beta)

    def step(index: int) -> None:
        rows = [(index * args.batch + i) % args.pairs for i in range(args.batch)]
        step_generator = torch.Generator().manual_seed(index)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            if ours:
                family = UNetFamily().configure({"scaling_factor": scaling}, config)
                output = dpo_step(
                    unet, family, schedule, encoded, rows, step_generator, config, device, retain=retain
                )
            else:
                output = peer_step(rows, step_generator)
        timed("backward", output.loss.backward)
        timed("optimizer", optimizer.step)
        optimizer.zero_grad(set_to_none=True)

    forward_started: list[float] = []

    def before_forward(module, inputs):
        forward_started.append(time.perf_counter())

    def after_forward(module, inputs, output):
        if device.type == "cuda":
            torch.cuda.synchronize()
        name = "unet forward, reference" if not torch.is_grad_enabled() else "unet forward, trained"
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - forward_started.pop()

    for module in {unet, reference} - {None}:
        module.register_forward_pre_hook(before_forward)
        module.register_forward_hook(after_forward)

    for index in range(2):
        step(index)
    phases.clear()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(args.steps):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    profile = {phase: value / args.steps for phase, value in phases.items()}
    profile["rest (latents, noise, loss, cache reads)"] = seconds / args.steps - sum(profile.values())
    return {"strategy": args.strategy, "pairs_per_s": args.steps * args.batch / seconds, "peak_mib": peak_mib(device),
            "encode_once_s": encode_seconds if ours else 0.0, "retain_once_s": retain_seconds if ours else 0.0,
            "profile_s_per_step": profile}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--retain_prompts", type=int, default=40, help="retain captions (the shipped list's first)"
    )
    parser.add_argument(
        "--retain_sample_steps", type=int, default=25, help="inference steps of the retain samples"
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        print(json.dumps(run_strategy(args)))
        return
    strategies = [s for s in STRATEGIES if s in args.strategies or s == "ours"]
    runs = {name: [] for name in strategies}
    for _ in range(args.repeats):
        for strategy in strategies:
            command = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--strategies",
                *strategies,
                "--strategy",
                strategy,
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[strategy].append(json.loads(output.strip().splitlines()[-1]))
    median = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("pairs_per_s", "peak_mib")}
        for name, rs in runs.items()
    }
    memory = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"shape {args.shape}, {args.resolution} px, batch {args.batch} pairs, {args.steps} steps, {args.device}, "
          f"median of {args.repeats} alternating runs")  # fmt: skip
    print(f"| strategy | pairs/s | {memory} | ours / it, pairs/s | ours / it, memory |")
    print("|---|---|---|---|---|")
    ours = median["ours"]
    for name, m in median.items():
        print(f"| {name} | {m['pairs_per_s']:.3f} | {m['peak_mib']:.0f} | {ours['pairs_per_s'] / m['pairs_per_s']:.2f}x | "
              f"{ours['peak_mib'] / m['peak_mib']:.2f}x |")  # fmt: skip
    phases = sorted({phase for rs in runs.values() for r in rs for phase in r["profile_s_per_step"]})
    print("\nWhere a step's time goes (seconds per step, medians):\n")
    print("| phase | " + " | ".join(strategies) + " |")
    print("|---|" + "---|" * len(strategies))
    for phase in phases:
        cells = [
            f"{statistics.median(r['profile_s_per_step'].get(phase, 0.0) for r in runs[n]):.3f}"
            for n in strategies
        ]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print(f"one-time encoding of {args.pairs} pairs (both orientations): "
          f"{statistics.median(r['encode_once_s'] for r in runs['ours']):.2f} s")  # fmt: skip
    added = [(name, base) for name, base in RETAIN_BASELINES.items() if name in runs and base in runs]
    if added:
        print("\nThe output-preserving term: step time and memory over the same step without it\n")
        print(f"| strategy | over | step time ratio | {memory} ratio | one-time retain set s |")
        print("|---|---|---|---|---|")
        for name, base in added:
            once = statistics.median(r["retain_once_s"] for r in runs[name])
            print(f"| {name} | {base} | {median[base]['pairs_per_s'] / median[name]['pairs_per_s']:.2f}x | "
                  f"{median[name]['peak_mib'] / median[base]['peak_mib']:.2f}x | {once:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
