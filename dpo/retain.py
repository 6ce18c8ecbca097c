"""The output-preserving term's retain set: captions whose images an expert must leave as the base renders them.

Diffusion-DPO ties the expert to the reference only through beta, on the training captions; nothing
stops a LoRA from also changing what other captions render. DUO (arXiv 2407.21035) adds an
output-preserving term, as do AdvUnlearn (a retain set), MACE/UCE (preservation in their closed forms) and
DreamBooth (prior preservation):

    loss = Diffusion-DPO + retain_weight * mean_r || eps_theta(x_t, c_r, t) - eps_ref(x_t, c_r, t) ||^2

over retain captions ``c_r``. This module says which captions (``--retain_prompts``) and caches, once per
(base model, resolution, caption list, sampling settings), their text embeddings and the base's own samples
of them (``--retain_samples`` latents per caption, the full pipeline call). A step noises one of those samples
to ``x_t`` (``dpo.trainer.dpo_step``), as DreamBooth's prior preservation noises the frozen model's own images:
the term then holds the expert to the base where the base's outputs for those captions live, not at the
training images (holding it there on neutral captions would hold back exactly the change DPO makes, wherever
the LoRA cannot tell the captions apart). What it costs: one sampling pass over the retain captions per cache
miss, and ``retain_share`` more rows in each step's two UNet calls. The ``text`` mode
(:func:`cross_attention_leak`) needs only the embeddings: no sampling, no UNet rows.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from coprov2.errors import UserError
from dpo.data import PreferencePairs
from dpo.encode import CACHE_VERSION, publish
from dpo.families import Family
from dpo.families.unet import UNetFamily

#: Everyday scenes, none near a safety category (written for this project): the default retain set, and
#: the preserve prompts of the closed-form merge (``merge.run.PRESERVE_PROMPTS``).
NEUTRAL_PROMPTS = Path(__file__).parent / "data" / "neutral_prompts.txt"
#: Module name suffixes the ``text`` mode's term reads (the only family whose cross-attention reads the text
#: encoder's states unchanged: ``Family.reads_encoder_states``).
CROSS_ATTENTION_KV = UNetFamily.placements["cross"]
#: ``--retain_prompts`` by name; anything else is a ``.txt`` file, one caption per line.
RETAIN_SOURCES = ("neutral", "other")
#: ``other``: at most this many distinct captions of each other category (the embeddings stay small:
#: 6 x 64 captions of SD1.5 are 90 MB).
OTHER_PER_CATEGORY = 64


@dataclass
class RetainSet:
    """Per retain caption: text embeddings ``[R, L, D]`` (SDXL: pooled ``[R, D']``) and, for the ``unet``
    mode, the base's samples of it, ``latents[r * S + s]`` (``[R * S, C, h, w]``, scaled as the UNet reads them)."""

    text: torch.Tensor
    latents: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        """Rows a step draws from: samples, or captions where there are none."""
        return len(self.latents) if self.latents is not None else len(self.text)

    def caption(self, row: torch.Tensor) -> torch.Tensor:
        """The caption of each drawn row."""
        return row // (len(self) // len(self.text))


def cross_attention_leak(unet, text: torch.Tensor) -> torch.Tensor:
    """The ``text`` mode's term, no UNet pass: the mean over the cross-attention key/value LoRAs of
    ``|scale * B A h|^2`` over every token state ``h`` of ``text`` (``[R, L, D]``), the change those LoRAs make
    to the keys and values the retain captions give. Such a LoRA changes an image only through them, so
    the term is zero exactly when the expert leaves the retain captions' cross-attention inputs alone."""
    terms = [
        (
            layer.lora_B[name](layer.lora_A[name](text.to(layer.lora_A[name].weight.dtype)))
            * layer.scaling[name]
        )
        .float()
        .pow(2)
        .sum(-1)
        .mean()
        for module_name, layer in unet.named_modules()
        if module_name.endswith(CROSS_ATTENTION_KV) and hasattr(layer, "lora_A")
        for name in layer.active_adapters
        if name in layer.lora_A
    ]
    return torch.stack(terms).mean()  # DPOConfig refuses the text mode for LoRAs placed elsewhere


def retain_prompts(source: str, pairs: PreferencePairs, category: str) -> list[str]:
    """The retain captions ``source`` names for an expert of ``category`` trained on ``pairs``.

    ``neutral``: the shipped everyday list; ``other``: the other categories' captions of the same dataset
    (their unsafe prompts, the only prompt both the CoProV2 and the release layout hold: the expert must
    leave them to their own experts); else a ``.txt`` file, one caption per line.
    """
    if source == "neutral":
        path = NEUTRAL_PROMPTS
    elif source == "other":
        own = set(pairs.indices(category))  # every row for ``all``: there is no other category then
        kept: dict[str, list[str]] = {}
        for row, (caption, other) in enumerate(zip(pairs.captions, pairs.categories, strict=True)):
            chosen = kept.setdefault(other, [])
            if row not in own and len(chosen) < OTHER_PER_CATEGORY and caption not in chosen:
                chosen.append(caption)
        prompts = [caption for name in sorted(kept) for caption in kept[name]]
        if not prompts:
            raise UserError(
                f"--retain_prompts other: {pairs.source} has no category besides {category!r}; "
                "use --retain_prompts neutral or a .txt file of captions"
            )
        return prompts
    else:
        path = Path(source)
        if path.suffix != ".txt" or not path.is_file():
            raise UserError(
                f"--retain_prompts {source}: not one of {', '.join(RETAIN_SOURCES)} nor a .txt file of captions"
            )
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--retain_prompts {source}: the file holds no caption; write one per line")
    return prompts


def cached_retain_set(
    load_pipe,
    family: Family,
    prompts: list[str],
    base: str,
    resolution: int,
    samples: int,
    steps: int,
    guidance: float,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> RetainSet:
    """The retain set of ``prompts`` under ``base`` (``load_pipe()``: its whole pipeline, UNet included unless
    ``samples`` is 0, the ``text`` mode's set: embeddings only), from
    ``cache_dir`` or, on a miss, computed into a partial folder and renamed when whole (as
    ``dpo.encode.cached_encode``). Samples are seeded by caption position, so the cache is a pure function of
    its key."""
    payload = [CACHE_VERSION, "retain", base, resolution, samples, steps, guidance, prompts]
    payload += [family.settings()] if family.settings() else []
    folder = Path(cache_dir) / f"retain-{hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]}"
    if not (folder / "meta.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
        pipe = load_pipe()
        pipe.set_progress_bar_config(disable=True)
        text, pooled, latents = [], [], []
        for start in tqdm(range(0, len(prompts), 8), desc="retain set", disable=not progress):
            batch = prompts[start : start + 8]
            embeds, pooled_embeds = family.encode_text(pipe, batch, device)
            text.append(embeds)
            pooled.append(pooled_embeds)
            if samples == 0:
                continue
            with torch.no_grad():
                sampled = pipe(
                    batch, height=resolution, width=resolution, num_inference_steps=steps,
                    guidance_scale=guidance, num_images_per_prompt=samples, output_type="latent",
                    generator=torch.Generator().manual_seed(start), **family.pipeline_kwargs(),
                ).images  # fmt: skip
            latents.append(family.from_pipeline_latents(pipe, sampled, resolution))
        np.save(partial / "text.npy", torch.cat(text).float().cpu().numpy())
        if latents:
            np.save(partial / "latents.npy", torch.cat(latents).float().cpu().numpy())
        if pooled[0] is not None:
            np.save(partial / "pooled.npy", torch.cat(pooled).float().cpu().numpy())
        (partial / "meta.json").write_text(json.dumps({"base": base, "prompts": len(prompts)}) + "\n")
        publish(partial, folder)

    def load(name: str) -> torch.Tensor | None:
        path = folder / f"{name}.npy"
        return torch.from_numpy(np.load(path)) if path.exists() else None

    return RetainSet(load("text"), load("latents"), load("pooled"))
