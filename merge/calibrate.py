"""Calibration for Co-Merge: what each expert's LoRA branch does on inputs like the ones it will see.

Inputs: calibration prompts from every category (a CoProV2 dataset or a text file); the base
pipeline's own samples for them (``output_type="latent"``), noised at several timesteps. For each
expert, loaded with ``pipe.load_lora_weights`` and made the only active adapter, forward hooks on
every adapted layer record, over the calibration tokens, the mean ``|h_e|`` per output channel
(``h_e = scale_e B_e A_e x_e``) and the mean ``|x_e|`` per input channel. By default every expert
is measured on every prompt; ``expert_prompts`` restricts each expert to some of them (its own
category's, for the own-category variant of Co-Merge).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from coprov2.errors import UserError
from dpo.encode import encode_text
from merge.experts import Expert, LoraLayer

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


def calibration_prompts(source: str, per_category: int = 8, split: str = "train") -> list[str]:
    """Prompts from a text file (one per line) or ``per_category`` unsafe prompts of every category of a dataset."""
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise UserError(f"--calibration {source}: no such file")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        by_category = calibration_prompts_by_category(source, per_category, split)
        prompts = [p for category in sorted(by_category) for p in by_category[category]]
    if not prompts:
        raise UserError(f"calibration set {source} is empty")
    return prompts


def calibration_prompts_by_category(
    source: str, per_category: int = 8, split: str = "train"
) -> dict[str, list[str]]:
    """Up to ``per_category`` distinct unsafe prompts of every category of a CoProV2 dataset (or release CSVs)."""
    from dpo.data import load_preference_pairs

    pairs = load_preference_pairs(source, split=split)
    by_category: dict[str, list[str]] = defaultdict(list)
    for caption, category in zip(pairs.captions, pairs.categories, strict=True):
        if len(by_category[category]) < per_category and caption not in by_category[category]:
            by_category[category].append(caption)
    return dict(by_category)


def own_category_prompts(
    by_category: dict[str, list[str]], categories: list[str]
) -> tuple[list[str], list[list[int]]]:
    """The prompts of ``categories`` in order, and for each one the indices of its own prompts
    (``activation_scores``'s ``expert_prompts`` for experts trained on those categories)."""
    prompts: list[str] = []
    expert_prompts = []
    for category in categories:
        own = by_category[category]
        expert_prompts.append(list(range(len(prompts), len(prompts) + len(own))))
        prompts += own
    return prompts, expert_prompts


def _conditioning(pipe, prompts: list[str], device, resolution: int):
    embeds, pooled = encode_text(pipe, prompts, device)
    if pooled is None:
        return embeds, None
    time_ids = pipe._get_add_time_ids(
        (resolution, resolution),
        (0, 0),
        (resolution, resolution),
        embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).repeat(len(prompts), 1)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids.to(device)}


def branch_sums(lora: LoraLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the rows of ``x`` ``[tokens, in]``: sum of ``|h|`` per output channel, ``h = scale B A x``
    (the LoRA branch's output), and sum of ``|x|`` per input channel; divided by the token count
    they are Co-Merge's row and input scores."""
    h = lora.scale * (x @ lora.A.T) @ lora.B.T
    return h.abs().sum(0), x.abs().sum(0)


def activation_scores(
    base: str,
    experts: list[Expert],
    sources: list[str],
    prompts: list[str],
    *,
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
    resolution: int | None = None,
    sample_steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    expert_prompts: list[list[int]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(row_scores, input_scores)``: per layer ``[E, out]`` mean ``|h_e|`` and ``[E, in]`` mean ``|x_e|``.

    ``expert_prompts[e]`` (default: all) are the indices of the prompts expert ``e`` is measured on;
    the noise of a (prompt, timestep) is the same whichever expert sees it.
    """
    if expert_prompts is None:
        expert_prompts = [list(range(len(prompts)))] * len(experts)
    empty = [e for e, chosen in enumerate(expert_prompts) if not chosen]
    if empty:
        raise UserError(f"expert {experts[empty[0]].name} has no calibration prompts")
    pipe = DiffusionPipeline.from_pretrained(base).to(device)
    pipe.set_progress_bar_config(disable=True)
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = pipe(
            prompts,
            height=resolution,
            width=resolution,
            num_inference_steps=sample_steps,
            guidance_scale=1.0,
            generator=generator,
            output_type="latent",
        ).images.cpu()
    text, added = _conditioning(pipe, prompts, device, resolution)
    names = [f"expert{e}" for e in range(len(experts))]
    for source, name in zip(sources, names, strict=True):
        pipe.load_lora_weights(source, adapter_name=name)
    layers = list(experts[0].layers)
    rows = {layer: torch.zeros(len(experts), experts[0].layers[layer].B.shape[0]) for layer in layers}
    inputs = {layer: torch.zeros(len(experts), experts[0].layers[layer].A.shape[1]) for layer in layers}
    tokens = {layer: torch.zeros(len(experts)) for layer in layers}
    current = {"expert": 0}

    def hook(layer: str):
        def record(module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).cpu()
            row_sums, input_sums = branch_sums(experts[current["expert"]].layers[layer], x)
            rows[layer][current["expert"]] += row_sums
            inputs[layer][current["expert"]] += input_sums
            tokens[layer][current["expert"]] += x.shape[0]

        return record

    handles = [pipe.unet.get_submodule(layer).register_forward_hook(hook(layer)) for layer in layers]
    try:
        noise = {
            t: torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + t)) for t in timesteps
        }
        work = [
            (e, t, torch.tensor(expert_prompts[e][s : s + batch_size]))
            for e in range(len(experts))
            for t in timesteps
            for s in range(0, len(expert_prompts[e]), batch_size)
        ]
        for e, t, rows_in in tqdm(work, desc="calibrate", unit="batch", disable=not progress):
            current["expert"] = e
            pipe.set_adapters(names[e])
            step = torch.full((len(rows_in),), t, dtype=torch.long)
            noisy = pipe.scheduler.add_noise(clean[rows_in], noise[t][rows_in], step).to(
                device, pipe.unet.dtype
            )
            batch_added = {k: v[rows_in.to(v.device)] for k, v in added.items()} if added else None
            with torch.no_grad():
                pipe.unet(
                    noisy, step.to(device), text[rows_in.to(text.device)], added_cond_kwargs=batch_added
                )
    finally:
        for handle in handles:
            handle.remove()
    return (
        {layer: rows[layer] / tokens[layer][:, None] for layer in layers},
        {layer: inputs[layer] / tokens[layer][:, None] for layer in layers},
    )
