"""What routing costs at SD1.5's shape: the router's share of one image's generation, and switching adapters.

SD1.5's architecture built from configs (random weights: no download; timings depend on shapes, not values):
CLIP ViT-L/14's text encoder (768 wide, 12 layers, 77 tokens), SD1.5's UNet (320-640-1280-1280, cross-attention
768) and VAE, a DDIM scheduler, 512 x 512, 50 steps, classifier-free guidance (the UNet runs on a batch of 2).

- Generation (the reference): the text-encoder pass, ``--unet-steps`` UNet steps timed and scaled to 50, and the
  VAE decode. Scaling the steps is the only shortcut: the 50 steps are the same call 50 times.
- The router: its head on the prompt's features (the pipeline's own text-encoder pass reused), and, for a router
  that encodes the prompt itself (``ConceptRouter.route``, as shipped), that head plus one more text-encoder pass.
- Switching: with ``--experts`` rank-4 LoRAs on the UNet's attention (the release's placement) loaded as named
  adapters, ``RoutedPipeline.activate`` for a route of one expert and for one of three (``enable_lora`` +
  ``set_adapters``, then ``disable_lora``).

    python benchmarks/router_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from merge.router.model import ConceptRouter
from merge.router.routed import RoutedPipeline, adapter_name


def sd15_shape_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, projection_dim=768))  # fmt: skip
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=512)  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder())
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def _tokenizer_folder() -> str:
    """The tiny pipeline's CLIP tokenizer (CLIP's BPE; the vocabulary size does not change the text pass's cost)."""
    from coprov2.tiny import resolve_tiny_model
    from dpo.config import default_cache_dir

    return resolve_tiny_model("tiny:sd15", f"{default_cache_dir()}/tiny-models") + "/tokenizer"


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (one warm-up first)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--experts", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = sd15_shape_pipeline()
    prompt = ["a photograph of a crowded street market at dusk, people carrying baskets"]
    with torch.no_grad():
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        text_pass = timed(lambda: pipe.text_encoder(ids), 5)
        states = pipe.text_encoder(ids)[0].repeat(2, 1, 1)
        latents = torch.randn(2, 4, 64, 64)
        unet_step = timed(lambda: pipe.unet(latents, 500, states), args.unet_steps)
        decode = timed(lambda: pipe.vae.decode(latents[:1] / 0.18215), 1)
    generation = text_pass + 50 * unet_step + decode
    categories = [f"category-{k}" for k in range(args.experts)]
    router = ConceptRouter(categories, 768, "prototype", concepts=[f"{c}/{c}" for c in categories])
    router.centroids.copy_(torch.randn(args.experts, 768))
    features = torch.randn(1, 768)
    with torch.no_grad():
        head = timed(lambda: router.decide(router(features)), 50)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    for category in categories:
        pipe.unet.add_adapter(config, adapter_name=adapter_name(category))
    routed = RoutedPipeline.__new__(RoutedPipeline)
    routed.pipe, routed.router, routed.scale = pipe, router, 1.0

    def switch(route: tuple[str, ...]) -> None:
        with routed.activate(route):
            pass

    one, three = timed(lambda: switch((categories[0],)), 10), timed(lambda: switch(tuple(categories[:3])), 10)
    rows = [
        ("one image: text pass + 50 x UNet (CFG batch 2) + VAE decode (reference)", generation, 1.0),
        ("  text-encoder pass", text_pass, text_pass / generation),
        ("  one UNet step", unet_step, unet_step / generation),
        ("router head on the pipeline's own features", head, head / generation),
        (
            "router with its own text-encoder pass (as shipped)",
            head + text_pass,
            (head + text_pass) / generation,
        ),
        (f"switch to a route of 1 of {args.experts} adapters and back", one, one / generation),
        (f"switch to a route of 3 of {args.experts} adapters and back", three, three / generation),
    ]
    print("| step | seconds | share of one image |\n|---|---|---|")
    for name, seconds, share in rows:
        print(f"| {name} | {seconds:.6f} | {100 * share:.4f}% |")


if __name__ == "__main__":
    main()
