"""Train one preference LoRA safety expert: cached inputs, adapters-off reference, exact resume.

Thin on purpose: diffusers gives the denoiser, the noise schedule and the LoRA file format, peft the
adapter, accelerate the processes, mixed precision and the checkpoint state, and the base's family
(``dpo/families``) everything that differs between a UNet (Diffusion-DPO) and a rectified-flow transformer
(Flow-DPO, SD3 and FLUX). What is ours:

- the reference is the same denoiser with its adapters disabled (no second copy in memory);
- the VAE latents and text embeddings come from a cache (``dpo/encode.py``), never recomputed;
- every random draw of a step (data order, latent sample, noise, timestep, empty caption) is a
  function of ``(seed, step, micro-batch, rank)``, so a run killed and resumed from a checkpoint
  takes exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from coprov2.canonical import canonicalize_tree
from coprov2.errors import UserError
from coprov2.seeds import derive_seed
from coprov2.tiny import resolve_tiny_model
from dpo.config import DPOConfig
from dpo.data import PreferencePairs, load_preference_pairs
from dpo.encode import EncodedPairs, cached_encode
from dpo.families import Conditioning, Family, family_of
from dpo.loss import add_preserving_term, diffusion_dpo_loss, per_sample_mse
from dpo.retain import RetainSet, cached_retain_set, cross_attention_leak, retain_prompts
from dpo.save import save_expert

logger = logging.getLogger(__name__)

CHECKPOINT_LORA = "lora_peft.safetensors"
TRAINER_STATE = "trainer_state.json"


@dataclass
class ExpertResult:
    category: str
    output_dir: Path
    metrics: dict[str, float]


@dataclass
class TrainingInputs:
    """What a run trains on, prepared before the denoiser loads: the config resolved for the base's family,
    the pairs' rows of the category, their cached encodings (and the held-out split's), the retain set."""

    config: DPOConfig
    base: str
    family: Family
    resolution: int
    pairs: PreferencePairs
    rows: list[int]
    encoded: EncodedPairs
    eval_encoded: EncodedPairs | None
    eval_rows: list[int]
    retain: RetainSet | None


def load_encoder_pipeline(
    base: str, revision: str | None, device: torch.device, family: Family, with_denoiser: bool = False
):
    """The base pipeline without its denoiser: encoding needs only the VAE and the text encoder(s), so a
    cache miss never holds the denoiser twice (the peers hold it, the VAE and the text encoders for the whole run).
    ``with_denoiser``: the whole pipeline, to sample the retain set (``dpo/retain.py``) before training starts."""
    model_index = DiffusionPipeline.load_config(base, revision=revision)
    kwargs = (
        {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in model_index else {}
    )
    # A component saved as absent (SD3 without T5: ``text_encoder_3: [null, null]``) is passed as None, as
    # ``from_pretrained`` wants it; the pipeline's ``encode_prompt`` then encodes without it, as at inference.
    kwargs |= {
        name: None for name, value in model_index.items() if isinstance(value, list) and value == [None, None]
    }
    if not (with_denoiser or family.encoding_needs_denoiser(model_index)):
        kwargs[family.denoiser] = None
    pipe = DiffusionPipeline.from_pretrained(base, revision=revision, **kwargs)
    return pipe.to(device)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, device: torch.device):
    """AdamW over the LoRA parameters, fused: one kernel for the hundreds of small LoRA tensors instead of
    a Python loop over them (CPU and CUDA). On CUDA, TF32 is allowed for what runs in float32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _batch_rows(
    step: int, micro: int, rank: int, config: DPOConfig, world: int, rows: list[int]
) -> list[int]:
    """The dataset rows of one micro-batch: a seeded permutation per epoch, walked in order."""
    size = config.train_batch_size
    start = ((step * config.gradient_accumulation_steps + micro) * world + rank) * size
    orders: dict[int, torch.Tensor] = {}  # a batch spans at most a few epochs
    chosen = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, len(rows))
        if epoch not in orders:
            seed = derive_seed(config.seed, "epoch", epoch)
            orders[epoch] = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        chosen.append(rows[int(orders[epoch][offset])])
    return chosen


def dpo_step(
    model,
    family: Family,
    noise_scheduler,
    encoded: EncodedPairs,
    rows: list[int],
    generator: torch.Generator,
    config: DPOConfig,
    device: torch.device,
    reference=None,
    retain: RetainSet | None = None,
):
    """The loss of one micro-batch. ``reference`` is the module run with adapters disabled (default ``model``).

    The noise process, the target and the denoiser's call are the ``family``'s: Diffusion-DPO on a UNet,
    Flow-DPO on a flow transformer; winner and loser share noise, timestep and caption either way.
    With ``retain`` and ``config.retain_weight > 0``, the output-preserving term (``dpo/retain.py``) is added:
    ``retain_share`` of the batch's size in the base's samples of retain captions, noised to the timesteps of
    the batch's first winners, ride in the same two denoiser calls as the pairs (one batch, not two calls).
    """
    index = torch.tensor(rows)
    size = len(rows)
    shape = (size, *encoded.winner_mean.shape[1:])
    draws = [torch.randn(shape, generator=generator) for _ in ("winner", "loser")]
    noise = torch.randn(shape, generator=generator).repeat(2, 1, 1, 1)
    timesteps = family.sample_timesteps(noise_scheduler, size, generator, config).repeat(2)
    empty = torch.rand(size, generator=generator) < config.proportion_empty_prompts
    # The release's random horizontal flip, drawn per image (winner and loser independently) after every
    # other draw, so runs without it take the same random stream as before it existed.
    flips = (
        (torch.rand(2, size, generator=generator) < 0.5).long()
        if encoded.flipped
        else torch.zeros(2, size, dtype=torch.long)
    )
    pairs = len(encoded.text)
    retain_pick = retain_noise = None
    if retain is not None and config.retain_weight > 0:
        # Drawn last, and only when on, so runs without the term take the same random stream as before it.
        kept = max(1, round(config.retain_share * size))
        retain_pick = torch.randint(0, len(retain), (kept,), generator=generator)
        if retain.latents is not None:
            retain_noise = torch.randn((kept, *shape[1:]), generator=generator)

    def latent(mean, std, flip: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        rows = index + pairs * flip  # a flipped image's encoding is row N + i of a flipped cache
        return mean[rows] + std[rows] * draw

    latents = family.to_model_space(
        torch.cat(
            [
                latent(encoded.winner_mean, encoded.winner_std, flips[0], draws[0]),
                latent(encoded.loser_mean, encoded.loser_std, flips[1], draws[1]),
            ]
        )
    )
    cond = Conditioning(
        torch.where(empty[:, None, None], encoded.empty_text, encoded.text[index]).repeat(2, 1, 1),
        None
        if encoded.pooled is None
        else torch.where(empty[:, None], encoded.empty_pooled, encoded.pooled[index]).repeat(2, 1),
        None if encoded.time_ids is None else encoded.time_ids[index].repeat(2, 1),
    ).to(device)

    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = family.add_noise(noise_scheduler, latents, noise, timesteps)
    target = family.target(noise_scheduler, latents, noise, timesteps)
    if retain_noise is not None:
        paired = torch.arange(len(retain_pick)) % size  # each retain sample takes a winner's timestep
        retain_t = timesteps[paired]
        retain_latents = retain.latents[retain_pick].to(device)
        noisy = torch.cat(
            [noisy, family.add_noise(noise_scheduler, retain_latents, retain_noise.to(device), retain_t)]
        )
        timesteps = torch.cat([timesteps, retain_t])
        captions = retain.caption(retain_pick)
        cond = cond.cat(
            Conditioning(
                retain.text[captions],
                None if retain.pooled is None else retain.pooled[captions],
                None if cond.time_ids is None else cond.time_ids[paired],  # the winner's size and crop ids
            ).to(device)
        )
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    reference = reference if reference is not None else model
    # inference_mode, not no_grad: the reference's outputs never take part in autograd, so no version
    # counters or views are tracked for them (benchmarks/dpo_trainer.py: "ours-before" vs "ours").
    with torch.inference_mode():
        reference.disable_adapters()
        try:
            ref_pred = family.predict(reference, noisy, timesteps, cond, dtype)
        finally:
            reference.enable_adapters()
    model_pred = family.predict(model, noisy, timesteps, cond, dtype)
    pairs_end = 2 * size
    output = diffusion_dpo_loss(model_pred[:pairs_end], ref_pred[:pairs_end], target, config.beta)
    if retain_pick is None:
        return output
    if retain_noise is None:  # the text mode
        term = cross_attention_leak(reference, retain.text[retain_pick].to(device))
    else:
        term = per_sample_mse(model_pred[pairs_end:], ref_pred[pairs_end:]).mean()
    return add_preserving_term(output, term, config.retain_weight)


def _checkpoints(expert_dir: Path) -> list[Path]:
    found = [p for p in (expert_dir / "checkpoints").glob("step-*") if (p / TRAINER_STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(m[key] for m in history) / len(history) for key in history[0]}


def evaluate_implicit_accuracy(
    model, family: Family, noise_scheduler, encoded: EncodedPairs, rows: list[int], config: DPOConfig, device,
    draws: int = 4,
) -> dict[str, float]:  # fmt: skip
    """Held-out DPO metrics over ``rows``: each pair scored at ``draws`` fixed (noise, timestep) draws."""
    history = []
    with torch.no_grad():
        for draw in range(draws):
            for start in range(0, len(rows), config.train_batch_size):
                generator = torch.Generator().manual_seed(derive_seed(config.seed, "eval", draw, start))
                batch = rows[start : start + config.train_batch_size]
                metrics = dpo_step(
                    model, family, noise_scheduler, encoded, batch, generator, config, device
                ).metrics
                history += [metrics] * len(batch)
    return {f"eval_{key}": value for key, value in _mean_metrics(history).items()}


class _Encoder:
    """Loads the base pipeline (without its denoiser) once, only when a cache misses."""

    def __init__(self, base: str, revision: str | None, device: torch.device, family: Family) -> None:
        self.base, self.revision, self.device, self.family, self.pipe = base, revision, device, family, None

    def __call__(self):
        if self.pipe is None:
            self.pipe = load_encoder_pipeline(self.base, self.revision, self.device, self.family)
        return self.pipe


def resolve_for_base(config: DPOConfig, base: str) -> tuple[Family, DPOConfig, int]:
    """The base's family configured for the run, the config resolved for it (beta, target modules) and the
    training resolution; every option the base cannot take (another family's options or LoRA targets, a size
    its VAE and denoiser cannot make) is one ``UserError`` naming it. Reads configs only, no weights: the workflow
    runs it for a whole recipe before its first step."""
    try:
        generic = family_of(base, config.revision)
        vae_config = AutoencoderKL.load_config(base, subfolder="vae", revision=config.revision)
        family = generic.configure(vae_config, config)
        resolved = config.for_family(family)
        family.check_target_modules(base, config.revision, resolved.target_modules)
        return family, resolved, family.resolution(base, config.revision, config.resolution, vae_config)
    except UserError as error:  # named as the user named it (tiny:flux, not the folder it was written to)
        raise UserError(str(error).replace(base, config.base)) from None


def prepare_inputs(config: DPOConfig, category: str, accelerator: Accelerator) -> TrainingInputs:
    """The base's family, the config resolved for it, the resolution checked, the pairs and their caches:
    everything a run needs before the denoiser loads, each bad input refused before any work."""
    device = accelerator.device
    with accelerator.main_process_first():  # one process writes tiny models and fills datasets' caches
        base = resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models")
        pairs = load_preference_pairs(config.dataset, config.dataset_config, config.split)
        eval_pairs, eval_rows = _eval_rows(config, category)
    rows = pairs.indices(category)
    family, config, resolution = resolve_for_base(config, base)
    kept_prompts = (
        retain_prompts(config.retain_prompts, pairs, category) if config.retain_weight > 0 else None
    )
    encoder = _Encoder(base, config.revision, device, family)
    model_key = f"{base}@{config.revision}"
    with accelerator.main_process_first():

        def encode(which: PreferencePairs, flipped: bool = False) -> tuple[EncodedPairs, Path, bool]:
            return cached_encode(
                encoder, which, family, model_key, resolution, Path(config.cache_dir), device, config.progress,
                flipped=flipped,
            )  # fmt: skip

        encoded, cache_file, hit = encode(pairs, config.random_flip)
        eval_encoded = encode(eval_pairs)[0] if eval_pairs is not None else None
        encoder.pipe = None  # the retain set loads the whole pipeline on a miss
        retain = None
        if kept_prompts is not None:
            unet_mode = config.retain_mode == "unet"
            retain = cached_retain_set(
                lambda: load_encoder_pipeline(base, config.revision, device, family, with_denoiser=unet_mode),
                family, kept_prompts, model_key, resolution, config.retain_samples if unet_mode else 0,
                config.retain_sample_steps, config.retain_guidance, Path(config.cache_dir), device, config.progress,
            )  # fmt: skip
    logger.info("inputs %s from cache %s", "read" if hit else "encoded", cache_file)
    return TrainingInputs(
        config, base, family, resolution, pairs, rows, encoded, eval_encoded, eval_rows, retain
    )


def prepare_model(inputs: TrainingInputs, accelerator: Accelerator, weight_dtype: torch.dtype):
    """The base's denoiser, frozen, with a seeded LoRA (the only trained weights, in float32), its optimizer
    and learning-rate schedule, prepared by accelerate; the LoRA alone goes into checkpoints."""
    config, family = inputs.config, inputs.family
    model = family.load_denoiser(inputs.base, config.revision, weight_dtype).to(accelerator.device)
    model.requires_grad_(False)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        init_lora_weights="gaussian",
        target_modules=config.target_modules,
    )
    torch.manual_seed(derive_seed(config.seed, "lora-init"))
    model.add_adapter(lora_config)
    cast_training_params(model, dtype=torch.float32)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    world = accelerator.num_processes
    learning_rate = config.learning_rate * (
        config.train_batch_size * config.gradient_accumulation_steps * world if config.scale_lr else 1
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, learning_rate, config.adam_weight_decay, accelerator.device)
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )  # fmt: skip
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    _register_lora_hooks(accelerator, accelerator.unwrap_model(model))
    return model, params, optimizer, lr_scheduler


def train_expert(config: DPOConfig, category: str | None = None) -> ExpertResult:
    """Train (or resume) the expert for ``category`` (default ``config.category``); returns its folder and metrics."""
    category = category or config.category
    expert_dir = config.expert_dir(category)
    cpu = not torch.cuda.is_available()
    mixed = config.mixed_precision
    if mixed == "auto":  # the family's precision on a GPU: read before the Accelerator, which takes it
        with PartialState(cpu=cpu).main_process_first():  # one process writes a tiny base
            base = resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models")
        mixed = "no" if cpu else family_of(base, config.revision).gpu_precision
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu)
    inputs = prepare_inputs(config, category, accelerator)
    config, family, device = inputs.config, inputs.family, accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
    noise_scheduler = family.load_scheduler(inputs.base, config.revision)
    model, params, optimizer, lr_scheduler = prepare_model(inputs, accelerator, weight_dtype)
    module = accelerator.unwrap_model(model)

    start, history = _resume(accelerator, config, expert_dir)
    expert_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = expert_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start, accelerator)
    world = accelerator.num_processes
    progress = tqdm(
        range(start, config.max_train_steps), initial=start, total=config.max_train_steps,
        desc=f"{family.objective} {category}", disable=not (config.progress and accelerator.is_main_process),
    )  # fmt: skip
    for step in progress:
        step_metrics = []
        for micro in range(config.gradient_accumulation_steps):
            batch = _batch_rows(step, micro, accelerator.process_index, config, world, inputs.rows)
            generator = torch.Generator().manual_seed(
                derive_seed(config.seed, "step", step, micro, accelerator.process_index)
            )
            last = micro == config.gradient_accumulation_steps - 1
            with accelerator.autocast(), accelerator.no_sync(model) if not last else contextlib.nullcontext():
                output = dpo_step(
                    model, family, noise_scheduler, inputs.encoded, batch, generator, config, device, module,
                    inputs.retain,
                )  # fmt: skip
                accelerator.backward(output.loss / config.gradient_accumulation_steps)
            step_metrics.append(output.metrics)
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = _reduce(accelerator, _mean_metrics(step_metrics), device)
        done = step + 1
        _check_finite(metrics, done, expert_dir)
        history.append(metrics)
        if done % config.logging_steps == 0 or done == config.max_train_steps:
            logged = {
                "step": done,
                "lr": lr_scheduler.get_last_lr()[0],
                **_mean_metrics(history[-config.logging_steps :]),
            }
            progress.set_postfix(loss=f"{logged['loss']:.4f}", acc=f"{logged['implicit_acc']:.2f}")
            if accelerator.is_main_process:
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(logged) + "\n")
        if done % config.checkpointing_steps == 0 or done == config.max_train_steps:
            _save_checkpoint(accelerator, config, expert_dir, done, history[-config.logging_steps :])

    final = _final_metrics(metrics_path)
    module.eval()
    if inputs.eval_encoded is not None:
        with accelerator.autocast():
            final.update(
                evaluate_implicit_accuracy(
                    module, family, noise_scheduler, inputs.eval_encoded, inputs.eval_rows, config, device
                )
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_expert(module, inputs, category, expert_dir, final)
    accelerator.wait_for_everyone()
    return ExpertResult(category, expert_dir, final)


def _check_finite(metrics: dict[str, float], step: int, expert_dir: Path) -> None:
    """A non-finite loss stops the run (the same reduced value on every rank: all stop together)."""
    if not math.isfinite(metrics["loss"]):
        kept = _checkpoints(expert_dir)
        raise UserError(
            f"the loss became {metrics['loss']} at step {step}; training stopped and nothing after the last "
            f"good checkpoint ({kept[-1] if kept else 'none yet'}) was saved. Lower --learning_rate or "
            "--beta, or train with --mixed_precision no"
        )


def train(config: DPOConfig) -> list[ExpertResult]:
    """Train the expert(s) ``config.category`` names: one, All-single (``all``), or every category (``each``)."""
    if config.category != "each":
        return [train_expert(config)]
    pairs = load_preference_pairs(config.dataset, config.dataset_config, config.split)
    return [train_expert(config, category) for category in sorted(set(pairs.categories))]


def _eval_rows(config: DPOConfig, category: str) -> tuple[PreferencePairs | None, list[int]]:
    if not config.eval_split or config.eval_split == config.split:
        return None, []
    try:
        pairs = load_preference_pairs(config.dataset, config.dataset_config, config.eval_split)
        return pairs, pairs.indices(category)
    except (ValueError, FileNotFoundError, KeyError) as error:
        logger.warning("no held-out evaluation: %s", error)
        return None, []


def _reduce(accelerator: Accelerator, metrics: dict[str, float], device) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return metrics
    values = accelerator.reduce(torch.tensor(list(metrics.values()), device=device), reduction="mean")
    return dict(zip(metrics, values.tolist(), strict=True))


def _register_lora_hooks(accelerator: Accelerator, module) -> None:
    """Checkpoints hold the LoRA weights only (the release wrote the whole UNet and could not resume)."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_file(get_peft_model_state_dict(module), Path(output_dir) / CHECKPOINT_LORA)
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            models.pop()
        result = set_peft_model_state_dict(module, load_file(Path(input_dir) / CHECKPOINT_LORA))
        if result.unexpected_keys:
            raise RuntimeError(
                f"{input_dir}: checkpoint LoRA keys do not match the model: {result.unexpected_keys[:3]}"
            )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _resume(
    accelerator: Accelerator, config: DPOConfig, expert_dir: Path
) -> tuple[int, list[dict[str, float]]]:
    """The step to continue from and the per-step metrics the next logged mean still needs."""
    checkpoints = _checkpoints(expert_dir)
    if not config.resume or not checkpoints:
        return 0, []
    latest = checkpoints[-1]
    state = json.loads((latest / TRAINER_STATE).read_text())
    saved, now = state["hyperparameters"], json.loads(json.dumps(config.hyperparameters()))
    if saved != now:  # a setting added since the checkpoint was written counts as changed
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "unset") != now.get(k, "unset"))
        raise UserError(
            f"{latest} was trained with other settings ({', '.join(changed)}); use another --output_dir or --no_resume"
        )
    accelerator.load_state(str(latest))
    logger.info("resumed from %s (step %d)", latest, state["step"])
    return int(state["step"]), state["recent_metrics"]


def _truncate_metrics(path: Path, step: int, accelerator: Accelerator) -> None:
    """Drop metric lines logged after the checkpoint a run resumes from (they will be logged again)."""
    if accelerator.is_main_process and path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _save_checkpoint(
    accelerator: Accelerator, config: DPOConfig, expert_dir: Path, step: int, recent: list[dict[str, float]]
) -> None:
    root = expert_dir / "checkpoints"
    partial = root / f"step-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        canonicalize_tree(partial)
        # The last logging window's per-step metrics, so a resumed run logs the same means.
        state = {"step": step, "hyperparameters": config.hyperparameters(), "recent_metrics": recent}
        (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        final = root / f"step-{step}"
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in _checkpoints(expert_dir)[: -config.checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _final_metrics(path: Path) -> dict[str, Any]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not lines:
        return {}
    last = lines[-1]
    return {f"train_{k}": v for k, v in last.items() if k not in ("step", "lr")} | {"steps": last["step"]}
