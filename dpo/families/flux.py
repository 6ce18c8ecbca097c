"""The FLUX family: FLUX.1-dev and -schnell (double- and single-stream blocks, packed latents, rotary ids)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpo.families.base import RELEASE_BETA, Conditioning, check_resolution, t5_mask
from dpo.families.flow import FlowFamily

#: ``FluxPipeline.default_sample_size``: the pipeline's native resolution is this x the VAE factor.
FLUX_SAMPLE_SIZE = 128


@dataclass(frozen=True)
class FluxFamily(FlowFamily):
    """Latents ``(x - shift) * scale`` packed into 2x2 patches (``FluxPipeline._pack_latents``), with per-patch
    image ids and all-zero text ids; text: T5's token states, CLIP's pooled embedding; FLUX.1-dev's distilled
    guidance goes in as ``guidance`` (``--guidance_scale``, train_dreambooth_lora_flux.py's default 3.5).

    Beta: ``5000 E[(1 - sigma)^2] = 5000 / 3`` for the uniform timesteps of diffusers' FLUX script (its
    scheduler's shift is dynamic, applied at inference only; ``dpo/families/flow.py`` says why)."""

    name = "flux"
    default_beta = RELEASE_BETA / 3
    default_max_sequence_length = 512  # train_dreambooth_lora_flux.py's --max_sequence_length
    token_states = "T5's token states"
    prompt_states = f"{token_states}, and of CLIP only its pooled embedding"
    default_weighting_scheme = "none"  # and its --weighting_scheme

    guidance_scale: float = 3.5

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return (model_index.get("transformer") or [None, None])[1] == "FluxTransformer2DModel"

    def _options(self, config: Any) -> dict[str, Any]:
        return {**super()._options(config), "guidance_scale": config.guidance_scale}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "guidance_scale": self.guidance_scale}

    @property
    def sampling_guidance(self) -> float:
        return self.guidance_scale

    def resolution(self, base: str, revision: str | None, requested: int | None, vae_config: dict) -> int:
        scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
        return check_resolution(
            base, requested, FLUX_SAMPLE_SIZE * scale, scale * 2, f"VAE factor {scale} x 2x2 packing"
        )

    def encode_text(self, pipe, captions: list[str], device: torch.device):
        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=captions, prompt_2=None, device=device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )  # fmt: skip
        return embeds, pooled

    def prompt_token_mask(self, pipe, prompts: list[str]) -> torch.Tensor:
        """The text stream is T5's ``max_sequence_length`` token states."""
        return t5_mask(pipe.tokenizer_2, prompts, self.max_sequence_length)

    def search_tokenizer(self, pipe):
        return pipe.tokenizer_2

    def from_pipeline_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        return pipe._unpack_latents(latents, resolution, resolution, pipe.vae_scale_factor)

    def predict(self, model, noisy, timesteps, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        from diffusers import FluxPipeline

        size, channels, height, width = noisy.shape
        device = noisy.device
        packed = FluxPipeline._pack_latents(noisy, size, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(size, height // 2, width // 2, device, dtype)
        text_ids = torch.zeros(cond.text.shape[1], 3, device=device, dtype=dtype)
        config = getattr(model, "module", model).config  # accelerate's DDP wrapper holds the model in .module
        guidance = torch.full((size,), self.guidance_scale, device=device) if config.guidance_embeds else None
        output = model(
            hidden_states=packed.to(dtype), timestep=timesteps.to(dtype) / 1000, guidance=guidance,
            pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.text.to(dtype),
            txt_ids=text_ids, img_ids=image_ids, return_dict=False,
        )[0]  # fmt: skip
        # height/width in latent pixels with a factor of 1: FluxPipeline._unpack_latents takes image pixels
        return FluxPipeline._unpack_latents(output, height, width, 1)
