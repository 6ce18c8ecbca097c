"""Rectified-flow transformers (SD3/SD3.5, FLUX.1): what they share, Flow-DPO's noise process and target.

Flow-DPO (Liu et al., arXiv 2501.13918) is Diffusion-DPO for rectified flow: the noisy latent is
``x_t = (1 - sigma) x_0 + sigma eps``, the transformer predicts the velocity, each image's error is
``||v_theta - (eps - x_0)||^2``, and the preference logit is built from the four errors (model and reference,
winner and loser) exactly as Diffusion-DPO builds it (``dpo.loss.diffusion_dpo_loss``), with beta constant
over t. Timesteps are drawn as diffusers' ``train_dreambooth_lora_sd3.py``/``_flux.py`` draw them:
``u`` from the weighting scheme's density (``diffusers.training_utils.compute_density_for_timestep_sampling``),
``timesteps = scheduler.timesteps[int(u * N)]``; the loss weighting those scripts apply for ``sigma_sqrt`` and
``cosmap`` is not offered: Flow-DPO keeps beta constant over t.

Beta: a noise-prediction error and a velocity error at the same sigma differ by a factor: from
``eps_hat = x_t + (1 - sigma) v_hat``, ``||eps_hat - eps||^2 = (1 - sigma)^2 ||v_hat - v||^2``. The release's
beta (5000, on noise errors) is therefore ``5000 (1 - sigma)^2`` on velocity errors, and a constant beta with
the same mean over the family's training timesteps is ``5000 E[(1 - sigma)^2]``: each family's default
(``tests/test_families.py`` checks it against the family's own timestep density and scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from coprov2.errors import UserError
from dpo.families.base import Family

#: Densities of ``--weighting_scheme`` (diffusers' names): uniform, logit-normal (mean 0, std 1) and SD3's mode.
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode")
#: diffusers' training scripts' defaults for the logit-normal and mode densities.
LOGIT_MEAN, LOGIT_STD, MODE_SCALE = 0.0, 1.0, 1.29


@dataclass(frozen=True)
class FlowFamily(Family):
    """A rectified-flow transformer; subclasses say how it is called and how text is encoded."""

    denoiser = "transformer"
    objective = "flow-dpo"
    objective_title = "Flow-DPO"
    method = (
        "Flow-DPO (arXiv 2501.13918), Diffusion-DPO for rectified flow: winner and loser share noise, sigma and "
        "caption; `x_t = (1 - sigma) x_0 + sigma eps`, errors `L = ||v_theta - (eps - x_0)||^2`, loss "
        "`-logsigmoid(-0.5 * beta * ((L_w - L_l) - (L_w - L_l)_ref))` with beta constant over t; the reference is "
        "the same transformer with its adapters disabled; VAE latents and every text encoder's embeddings were "
        "computed once and cached."
    )
    #: Every attention projection of the image and the text stream, or the text stream's keys and values only
    #: (``add_k_proj``/``add_v_proj``: the MM-DiT counterpart of cross-attention, where EraseAnything trains).
    placements: ClassVar[dict[str, tuple[str, ...]]] = {
        "all": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
        "cross": ("add_k_proj", "add_v_proj"),
    }
    options = ("max_sequence_length", "weighting_scheme")
    gpu_precision = "bf16"  # diffusers' SD3 and FLUX scripts: fp16 overflows in these transformers
    #: diffusers' training script's defaults for this family.
    default_max_sequence_length: ClassVar[int]
    default_weighting_scheme: ClassVar[str]

    max_sequence_length: int = 0
    weighting_scheme: str = ""

    def _options(self, config: Any) -> dict[str, Any]:
        scheme = config.weighting_scheme or self.default_weighting_scheme
        if scheme not in WEIGHTING_SCHEMES:
            raise UserError(f"--weighting_scheme {scheme}: choose from {', '.join(WEIGHTING_SCHEMES)}")
        return {
            "max_sequence_length": config.max_sequence_length or self.default_max_sequence_length,
            "weighting_scheme": scheme,
        }

    def settings(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length, "weighting_scheme": self.weighting_scheme}

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def load_scheduler(self, base: str, revision: str | None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", revision=revision)

    def load_denoiser(self, base: str, revision: str | None, dtype: torch.dtype) -> torch.nn.Module:
        return self.denoiser_class(base, revision).from_pretrained(
            base, subfolder="transformer", revision=revision, torch_dtype=dtype
        )

    def sample_timesteps(self, scheduler, size: int, generator: torch.Generator, config: Any) -> torch.Tensor:
        """The scheduler's training timesteps (``sigma * 1000``) drawn by the weighting scheme's density, within
        ``[--timestep_min, --timestep_max)`` when those are given (the density is then over that range)."""
        u = compute_density_for_timestep_sampling(
            self.weighting_scheme, size, LOGIT_MEAN, LOGIT_STD, MODE_SCALE, generator=generator
        )
        timesteps = scheduler.timesteps
        upper = config.timestep_max if config.timestep_max is not None else float("inf")
        allowed = timesteps[(timesteps >= config.timestep_min) & (timesteps < upper)]
        if not len(allowed):
            raise UserError(
                f"--timestep_min {config.timestep_min} / --timestep_max {config.timestep_max} leave no training "
                f"timestep of this base (its timesteps are sigma x {scheduler.config.num_train_timesteps})"
            )
        return allowed[(u * len(allowed)).long().clamp(max=len(allowed) - 1)]

    def _sigmas(self, scheduler, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
        sigmas = timesteps.float() / scheduler.config.num_train_timesteps
        return sigmas.view(-1, *[1] * (ndim - 1))

    def add_noise(self, scheduler, latents, noise, timesteps):
        sigmas = self._sigmas(scheduler, timesteps, latents.ndim).to(latents.device)
        return (1.0 - sigmas) * latents + sigmas * noise

    def target(self, scheduler, latents, noise, timesteps):
        return noise - latents
