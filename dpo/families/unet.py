"""The UNet family: SD1.x/2.x and SDXL, noise or v-prediction on a DDPM schedule (the release's Diffusion-DPO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from coprov2.errors import UserError
from dpo.families.base import RELEASE_BETA, Conditioning, Family, check_resolution, clip_mask
from dpo.families.flow import FlowFamily


@dataclass(frozen=True)
class UNetFamily(Family):
    """Diffusion-DPO as the release trains it: timesteps uniform over the DDPM schedule, the UNet predicts the
    noise (or ``v``), beta 5000 on the per-element mean squared error."""

    name = "unet"
    denoiser = "unet"
    objective = "diffusion-dpo"
    objective_title = "Diffusion-DPO"
    #: The release's four projections of every attention, or cross-attention keys and values only (MACE's and
    #: UCE's choice).
    placements: ClassVar[dict[str, tuple[str, ...]]] = {
        "all": ("to_q", "to_k", "to_v", "to_out.0"),
        "cross": ("attn2.to_k", "attn2.to_v"),
    }
    default_beta = RELEASE_BETA
    gpu_precision = "fp16"  # the release's
    reads_encoder_states = True
    method = (
        "Diffusion-DPO as in the SafetyDPO release: winner and loser share noise, timestep and caption; "
        "loss `-logsigmoid(-0.5 * beta * ((L_w - L_l) - (L_w - L_l)_ref))` on noise-prediction errors; the reference "
        "is the same UNet with its adapters disabled; VAE latents and text embeddings were computed once and cached."
    )

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return "unet" in model_index

    def _options(self, config: Any) -> dict[str, Any]:
        for option in FlowFamily.options:
            if getattr(config, option, None) is not None:
                raise UserError(
                    f"--{option} is for rectified-flow bases (SD3, FLUX.1); {config.base} is a UNet base: drop it"
                )
        return {}

    def load_denoiser(self, base: str, revision: str | None, dtype: torch.dtype) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(
            base, subfolder="unet", revision=revision, torch_dtype=dtype
        )

    def load_scheduler(self, base: str, revision: str | None):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=revision)

    def resolution(self, base: str, revision: str | None, requested: int | None, vae_config: dict) -> int:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.load_config(base, subfolder="unet", revision=revision)
        scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
        return check_resolution(
            base, requested, unet["sample_size"] * scale,
            scale * 2 ** (len(unet["down_block_types"]) - 1), f"VAE factor {scale} x UNet downsampling",
        )  # fmt: skip

    def encode_text(self, pipe, captions: list[str], device: torch.device):
        with torch.no_grad():
            if hasattr(pipe, "text_encoder_2"):  # SDXL: two encoders, the second's pooled embedding
                embeds, _, pooled, _ = pipe.encode_prompt(
                    captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return embeds, pooled
            embeds, _ = pipe.encode_prompt(captions, device, 1, do_classifier_free_guidance=False)
            return embeds, None

    def inference_conditioning(self, pipe, prompts: list[str], device, resolution: int) -> Conditioning:
        """SDXL adds the pipeline's own size and crop ids of an uncropped ``resolution`` image."""
        embeds, pooled = self.encode_text(pipe, prompts, device)
        if pooled is None:
            return Conditioning(embeds)
        time_ids = pipe._get_add_time_ids(
            (resolution, resolution), (0, 0), (resolution, resolution), embeds.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).repeat(len(prompts), 1)  # fmt: skip
        return Conditioning(embeds, pooled, time_ids.to(device))

    def prompt_token_mask(self, pipe, prompts: list[str]) -> torch.Tensor:
        """CLIP's tokens: the start token and the padding are False."""
        return clip_mask(pipe.tokenizer, prompts)

    def direct_text_encoder(self, pipe):
        """SD1.x/2.x: the one CLIP (SDXL joins two, so its search goes through ``encode_prompt``)."""
        return None if hasattr(pipe, "text_encoder_2") else pipe.text_encoder

    def time_ids(self, pipe, original_and_crop: list[tuple], resolution: int) -> torch.Tensor | None:
        """SDXL's ids per image: original size, crop corner, target size (the release computes them so)."""
        if not hasattr(pipe, "text_encoder_2"):
            return None
        rows = [[*original, *crop, resolution, resolution] for original, crop in original_and_crop]
        return torch.tensor(rows, dtype=torch.float32)

    def sample_timesteps(self, scheduler, size: int, generator: torch.Generator, config: Any) -> torch.Tensor:
        t_max = config.timestep_max or scheduler.config.num_train_timesteps
        return torch.randint(config.timestep_min, t_max, (size,), generator=generator)

    def add_noise(self, scheduler, latents, noise, timesteps):
        return scheduler.add_noise(latents, noise, timesteps)

    def target(self, scheduler, latents, noise, timesteps):
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def lora_layers(self, model) -> dict[str, torch.Tensor]:
        """diffusers' UNet layout, as its ``train_dreambooth_lora.py`` saves it."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    def predict(self, model, noisy, timesteps, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        added = None
        if cond.pooled is not None:
            added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        return model(noisy.to(dtype), timesteps, cond.text.to(dtype), added_cond_kwargs=added).sample
