"""Calibration: what each expert's LoRA branch does on inputs like the ones it will see.

Inputs: calibration prompts from every category (a CoProV2 dataset or a text file); the base
pipeline's own samples for them (``output_type="latent"``), noised at several timesteps. For each
expert, loaded with ``pipe.load_lora_weights`` and made the only active adapter, forward hooks on
every adapted layer hand the layer's inputs ``x_e`` to a recorder, in one streaming pass (the denoiser fed
as its family feeds it, ``dpo/families``: a UNet or an SD3/FLUX transformer):

- Co-Merge's (``ScoreRecorder``): the mean ``|h_e|`` per output channel (``h_e = scale_e B_e A_e x_e``)
  and the mean ``|x_e|`` per input channel;
- the closed-form fusion's (``GramRecorder``): ``M = sum_e delta_e G_e`` and ``S = sum_e G_e`` with
  ``G_e = X_e^T X_e / n_e``, and ``G0`` of the preserve prompts run through the base (adapters off).

By default every expert is measured on every prompt; ``expert_prompts`` restricts each expert to
some of them (its own category's).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from coprov2.errors import UserError
from dpo.config import DPOConfig
from dpo.families import family_of_pipeline
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


def branch_sums(lora: LoraLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the rows of ``x`` ``[tokens, in]``: sum of ``|h|`` per output channel, ``h = scale B A x``
    (the LoRA branch's output), and sum of ``|x|`` per input channel; divided by the token count
    they are Co-Merge's row and input scores."""
    h = lora.scale * (x @ lora.A.T) @ lora.B.T
    return h.abs().sum(0), x.abs().sum(0)


class Recorder(Protocol):
    """What a calibration pass feeds: every adapted layer's inputs, expert by expert.

    ``expert`` is the index of the active expert, or ``None`` for the base model on the preserve
    prompts. ``finish(expert)`` follows the last batch of that expert (or of the preserve prompts).
    """

    def record(self, layer: str, expert: int | None, x: torch.Tensor) -> None: ...

    def finish(self, expert: int | None) -> None: ...


class ScoreRecorder:
    """Co-Merge's scores: per layer ``[E, out]`` mean ``|h_e|`` and ``[E, in]`` mean ``|x_e|``."""

    def __init__(self, experts: list[Expert]) -> None:
        self.experts = experts
        layers = experts[0].layers
        self.rows = {name: torch.zeros(len(experts), lora.B.shape[0]) for name, lora in layers.items()}
        self.inputs = {name: torch.zeros(len(experts), lora.A.shape[1]) for name, lora in layers.items()}
        self.tokens = {name: torch.zeros(len(experts)) for name in layers}

    def record(self, layer: str, expert: int | None, x: torch.Tensor) -> None:
        row_sums, input_sums = branch_sums(self.experts[expert].layers[layer], x)
        self.rows[layer][expert] += row_sums
        self.inputs[layer][expert] += input_sums
        self.tokens[layer][expert] += x.shape[0]

    def finish(self, expert: int | None) -> None:
        pass

    def scores(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return (
            {layer: rows / self.tokens[layer][:, None] for layer, rows in self.rows.items()},
            {layer: inputs / self.tokens[layer][:, None] for layer, inputs in self.inputs.items()},
        )


@dataclass
class LayerGrams:
    """One layer's statistics for the closed-form fusion (float64): ``M = sum_e delta_e G_e`` ``[out, in]``,
    ``S = sum_e G_e`` and ``G0`` (the preserve prompts' Gram) ``[in, in]``, ``G = X^T X / n``."""

    M: torch.Tensor
    S: torch.Tensor
    G0: torch.Tensor | None = None


class GramRecorder:
    """The closed-form fusion's statistics in one streaming pass, memory independent of the number of experts.

    Each expert's Gram is summed over its own batches (``current``), then folded into ``M`` and ``S``
    when its last batch is in (``finish``), so a layer holds four matrices whatever E is. ``x^T x`` is
    taken per batch in the model's float32 and summed in float64.
    """

    def __init__(self, experts: list[Expert]) -> None:
        self.experts = experts
        self.grams: dict[str, LayerGrams] = {}
        self.current: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        for name, lora in experts[0].layers.items():
            out, inp = lora.B.shape[0], lora.A.shape[1]
            self.grams[name] = LayerGrams(
                M=torch.zeros(out, inp, dtype=torch.float64), S=torch.zeros(inp, inp, dtype=torch.float64)
            )
            self.current[name] = torch.zeros(inp, inp, dtype=torch.float64)
            self.count[name] = 0

    def record(self, layer: str, expert: int | None, x: torch.Tensor) -> None:
        self.current[layer] += (x.T @ x).double()
        self.count[layer] += x.shape[0]

    def finish(self, expert: int | None) -> None:
        for layer, total in self.current.items():
            if not self.count[layer]:
                raise UserError(
                    f"calibration: layer {layer} saw no inputs (every token of its prompts was left out)"
                )
            gram = total / self.count[layer]
            grams = self.grams[layer]
            if expert is None:
                grams.G0 = gram
            else:
                lora = self.experts[expert].layers[layer]
                grams.M += lora.scale * lora.B.double() @ (lora.A.double() @ gram)
                grams.S += gram
            self.current[layer] = torch.zeros_like(total)
            self.count[layer] = 0


def calibration_pass(
    base: str,
    experts: list[Expert],
    sources: list[str],
    prompts: list[str],
    recorder: Recorder,
    *,
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
    resolution: int | None = None,
    sample_steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    expert_prompts: list[list[int]] | None = None,
    preserve_prompts: list[str] | None = None,
    text_tokens: str = "all",
    family_options: dict[str, Any] | None = None,
) -> None:
    """Feed ``recorder`` every adapted layer's inputs, expert by expert, in one pass over the denoiser.

    The base's family (``dpo/families``) renders, encodes, noises and calls the denoiser as it was trained
    (``family_options``: the experts' family options, T5's length for SD3/FLUX); its text-stream layers
    (``placements["cross"]``: cross-attention keys and values of a UNet, ``add_k_proj``/``add_v_proj`` of an
    MM-DiT) are the ones whose inputs are prompt tokens.

    ``expert_prompts[e]`` (default: all) are the indices of the prompts expert ``e`` is measured on;
    the noise of a (prompt, timestep) is the same whichever expert sees it. ``preserve_prompts`` are
    then run through the base model (adapters off) as expert ``None``. ``text_tokens="prompt"`` leaves
    the start token and the padding out of the cross-attention keys' and values' inputs.
    """
    if expert_prompts is None:
        expert_prompts = [list(range(len(prompts)))] * len(experts)
    empty = [e for e, chosen in enumerate(expert_prompts) if not chosen]
    if empty:
        raise UserError(f"expert {experts[empty[0]].name} has no calibration prompts")
    preserve_prompts = list(preserve_prompts or [])
    everything = prompts + preserve_prompts
    groups: list[tuple[int | None, list[int]]] = list(enumerate(expert_prompts))
    if preserve_prompts:
        groups.append((None, list(range(len(prompts), len(everything)))))
    pipe = DiffusionPipeline.from_pretrained(base).to(device)
    pipe.set_progress_bar_config(disable=True)
    family = family_of_pipeline(pipe).configure(pipe.vae.config, DPOConfig(**(family_options or {})))
    model = getattr(pipe, family.denoiser)
    resolution = family.resolution(base, None, resolution, pipe.vae.config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = pipe(
            everything,
            height=resolution,
            width=resolution,
            num_inference_steps=sample_steps,
            guidance_scale=family.sampling_guidance,
            generator=generator,
            output_type="latent",
            **family.pipeline_kwargs(),
        ).images
        clean = family.from_pipeline_latents(pipe, clean, resolution).cpu()
    cond = family.inference_conditioning(pipe, everything, device, resolution)
    tokens = family.prompt_token_mask(pipe, everything)
    text_layers = tuple(f".{suffix}" for suffix in family.placements["cross"])
    names = [f"expert{e}" for e in range(len(experts))]
    for source, name in zip(sources, names, strict=True):
        pipe.load_lora_weights(source, adapter_name=name)
    current: dict[str, Any] = {"expert": 0, "rows": None}

    def hook(layer: str):
        keep_prompt_tokens = text_tokens == "prompt" and layer.endswith(text_layers)

        def record(module, args, output):
            x = args[0].detach().float()
            if keep_prompt_tokens:
                x = x[tokens[current["rows"]].to(x.device)]
            recorder.record(layer, current["expert"], x.reshape(-1, x.shape[-1]).cpu())

        return record

    handles = [model.get_submodule(layer).register_forward_hook(hook(layer)) for layer in experts[0].layers]
    try:
        noise = {
            t: torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + t)) for t in timesteps
        }
        work = [
            (
                e,
                t,
                torch.tensor(chosen[s : s + batch_size]),
                s + batch_size >= len(chosen) and t == timesteps[-1],
            )
            for e, chosen in groups
            for t in timesteps
            for s in range(0, len(chosen), batch_size)
        ]
        for e, t, rows_in, last in tqdm(work, desc="calibrate", unit="batch", disable=not progress):
            current["expert"], current["rows"] = e, rows_in
            if e is None:
                model.disable_adapters()
            else:
                model.enable_adapters()
                pipe.set_adapters(names[e])
            step = torch.full((len(rows_in),), t, dtype=torch.long)
            noisy = family.add_noise(pipe.scheduler, clean[rows_in], noise[t][rows_in], step).to(device)
            batch = cond.rows(rows_in)
            with torch.no_grad():
                family.predict(model, noisy, step.to(device), batch, model.dtype)
            if last:
                recorder.finish(e)
    finally:
        for handle in handles:
            handle.remove()


def activation_scores(
    base: str, experts: list[Expert], sources: list[str], prompts: list[str], **options: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Co-Merge's ``(row_scores, input_scores)`` from one :func:`calibration_pass` (same options)."""
    recorder = ScoreRecorder(experts)
    calibration_pass(base, experts, sources, prompts, recorder, **options)
    return recorder.scores()


def gram_statistics(
    base: str, experts: list[Expert], sources: list[str], prompts: list[str], **options: Any
) -> dict[str, LayerGrams]:
    """The closed-form fusion's per-layer statistics from one :func:`calibration_pass` (same options)."""
    recorder = GramRecorder(experts)
    calibration_pass(base, experts, sources, prompts, recorder, **options)
    return recorder.grams
