"""VAE latents and text embeddings, computed once per (dataset, base model, resolution) and cached on disk.

Training steps then never run the VAE encoder or the text encoders (the release runs both on every
step). The latent *distribution* is cached (mean and std), so each step still draws a fresh latent
as the release does. Text goes through the pipeline's own ``encode_prompt``, so SD1.5/SD2.1 and SDXL
(two encoders, pooled embeddings) embed exactly as they do at inference; SDXL's ``time_ids`` are
computed per pair from its original size and crop, as the release does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dpo.data import PreferencePairs

CACHE_VERSION = 1


@dataclass
class EncodedPairs:
    """Per row: winner/loser latent mean and std ``[N, C, h, w]``, text ``[N, L, D]``; SDXL extras."""

    winner_mean: torch.Tensor
    winner_std: torch.Tensor
    loser_mean: torch.Tensor
    loser_std: torch.Tensor
    text: torch.Tensor
    empty_text: torch.Tensor
    pooled: torch.Tensor | None = None
    empty_pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in vars(self).items() if v is not None}


def cache_key(pairs: PreferencePairs, base: str, resolution: int) -> str:
    payload = json.dumps([CACHE_VERSION, pairs.fingerprint, base, resolution])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def resize_and_crop(
    image: Image.Image, resolution: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The release's transform without the random flip: bilinear resize of the short side, center crop, [-1, 1].

    Returns the tensor, the original ``(height, width)`` and the crop's ``(top, left)`` (SDXL time ids).
    """
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    top, left = (height - resolution) // 2, (width - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return array, original, (top, left)


def encode_text(pipe, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings, pooled)`` from the pipeline's own ``encode_prompt``; ``pooled`` is None unless SDXL."""
    with torch.no_grad():
        if hasattr(pipe, "text_encoder_2"):
            embeds, _, pooled, _ = pipe.encode_prompt(
                captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return embeds, pooled
        embeds, _ = pipe.encode_prompt(captions, device, 1, do_classifier_free_guidance=False)
        return embeds, None


def encode_pairs(
    pipe,
    pairs: PreferencePairs,
    resolution: int,
    device: torch.device,
    batch_size: int = 8,
    progress: bool = True,
) -> EncodedPairs:
    """Run the VAE encoder and the text encoder(s) of ``pipe`` over every pair, in batches."""
    vae = pipe.vae
    columns: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("wm", "ws", "lm", "ls", "text", "pooled", "time")
    }
    xl = hasattr(pipe, "text_encoder_2")
    for start in tqdm(
        range(0, len(pairs), batch_size), desc="encode pairs", unit="batch", disable=not progress
    ):
        rows = range(start, min(start + batch_size, len(pairs)))
        for which, mean_key, std_key in (("safe", "wm", "ws"), ("unsafe", "lm", "ls")):
            prepared = [resize_and_crop(pairs.decode(i, which), resolution) for i in rows]
            pixels = torch.stack([p[0] for p in prepared]).to(device, vae.dtype)
            with torch.no_grad():
                distribution = vae.encode(pixels).latent_dist
            columns[mean_key].append(distribution.mean.float().cpu())
            columns[std_key].append(distribution.std.float().cpu())
            if xl and which == "safe":
                columns["time"] += [
                    torch.tensor([*original, *crop, resolution, resolution], dtype=torch.float32)[None]
                    for _, original, crop in prepared
                ]
        text, pooled = encode_text(pipe, [pairs.captions[i] for i in rows], device)
        columns["text"].append(text.float().cpu())
        if pooled is not None:
            columns["pooled"].append(pooled.float().cpu())
    empty_text, empty_pooled = encode_text(pipe, [""], device)
    return EncodedPairs(
        winner_mean=torch.cat(columns["wm"]),
        winner_std=torch.cat(columns["ws"]),
        loser_mean=torch.cat(columns["lm"]),
        loser_std=torch.cat(columns["ls"]),
        text=torch.cat(columns["text"]),
        empty_text=empty_text.float().cpu()[0],
        pooled=torch.cat(columns["pooled"]) if xl else None,
        empty_pooled=empty_pooled.float().cpu()[0] if xl else None,
        time_ids=torch.cat(columns["time"]) if xl else None,
    )


def cached_encode(
    load_pipe,
    pairs: PreferencePairs,
    base: str,
    resolution: int,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> tuple[EncodedPairs, Path, bool]:
    """Encoded pairs from ``cache_dir`` or, on a miss, from ``load_pipe()`` (then written atomically).

    Returns the pairs, the cache file and whether it was a hit.
    """
    path = Path(cache_dir) / f"{cache_key(pairs, base, resolution)}.safetensors"
    if path.exists():
        return EncodedPairs(**load_file(path)), path, True
    encoded = encode_pairs(load_pipe(), pairs, resolution, device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(
        encoded.tensors(),
        partial,
        metadata={"source": pairs.source, "base": base, "resolution": str(resolution)},
    )
    partial.replace(path)
    # Train from the file either way: the same values in the same memory layout as a cache hit, so a
    # run that encoded and one that read the cache take bit-identical steps.
    return EncodedPairs(**load_file(path)), path, False
