"""Paired rendering with any diffusers text-to-image pipeline (SD1.5, SD2.1, SDXL ids or folders).

Both prompts of a pair are rendered from the same seed: each image gets its own CPU ``torch.Generator``
seeded with the pair's seed, so the unsafe and the safe image start from the same initial latents and
share their layout (what the safety experts must preserve). Many pairs go through the pipeline in one
call: ``[u_1 .. u_B, s_1 .. s_B]`` with ``2B`` generators. CPU generators make the noise identical on
any device (diffusers draws it on the generator's device, then moves it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from coprov2.errors import UserError
from coprov2.images.config import IMAGE_FORMATS, ImagesConfig
from coprov2.seeds import derive_seed


def render_seed(run_seed: int, pair_id: str) -> int:
    return derive_seed(run_seed, "render", pair_id)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_t2i_pipeline(model: str, device: torch.device, dtype: str = "auto", compile_unet: bool = False):
    """The pipeline for ``model`` (Hub id or folder) on ``device``, safety checker not loaded.

    This dataset needs the unsafe images; the checker would black them out. SDPA attention is the
    default in diffusers on torch 2, so nothing is set for it.
    """
    components = DiffusionPipeline.load_config(model)
    extra = (
        {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in components else {}
    )
    pipe = DiffusionPipeline.from_pretrained(model, dtype=resolve_dtype(dtype, device), **extra)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    return pipe


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Lossless bytes of ``image`` (PNG, or lossless WebP)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=4)
    else:
        raise UserError(f"unknown image format {image_format!r}; choose from {', '.join(IMAGE_FORMATS)}")
    return buffer.getvalue()


def render_pairs(
    pipe,
    unsafe_prompts: Sequence[str],
    safe_prompts: Sequence[str],
    seeds: Sequence[int],
    config: ImagesConfig,
) -> list[tuple[Image.Image, Image.Image]]:
    """One (unsafe image, safe image) per pair, both from that pair's seed, in one pipeline call."""
    if not len(unsafe_prompts) == len(safe_prompts) == len(seeds):
        raise ValueError("unsafe_prompts, safe_prompts and seeds must have the same length")
    if not seeds:
        return []
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in [*seeds, *seeds]]
    negative = [config.negative_prompt] * (2 * len(seeds)) if config.negative_prompt else None
    images = pipe(
        prompt=[*unsafe_prompts, *safe_prompts],
        negative_prompt=negative,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=config.height,
        width=config.width,
        generator=generators,
        output_type="pil",
    ).images
    n = len(seeds)
    return list(zip(images[:n], images[n:], strict=True))
