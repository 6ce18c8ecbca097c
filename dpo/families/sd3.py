"""The SD3 family: Stable Diffusion 3 and 3.5 (MM-DiT, two CLIPs and T5, flow matching with shift 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpo.families.base import Conditioning, check_resolution, clip_mask, t5_mask
from dpo.families.flow import FlowFamily


@dataclass(frozen=True)
class SD3Family(FlowFamily):
    """Latents ``(x - shift) * scale`` read as patches; text: CLIP-L and CLIP-G token states side by side, padded
    to T5's width and followed by T5's, and the two CLIPs' pooled embeddings as the pooled projection.

    Beta: ``5000 E[(1 - sigma)^2] = 565`` over SD3's logit-normal timesteps with its scheduler's shift 3
    (``dpo/families/flow.py`` says why)."""

    name = "sd3"
    default_beta = 565.0
    default_max_sequence_length = 77  # train_dreambooth_lora_sd3.py's --max_sequence_length
    token_states = "CLIP-L's and CLIP-G's token states joined with T5's"
    prompt_states = f"{token_states}, and the CLIPs' pooled embeddings"
    default_weighting_scheme = "logit_normal"  # and its --weighting_scheme

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return (model_index.get("transformer") or [None, None])[1] == "SD3Transformer2DModel"

    def resolution(self, base: str, revision: str | None, requested: int | None, vae_config: dict) -> int:
        from diffusers import SD3Transformer2DModel

        transformer = SD3Transformer2DModel.load_config(base, subfolder="transformer", revision=revision)
        scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
        patch = transformer["patch_size"]
        largest = (transformer.get("pos_embed_max_size") or 0) * patch * scale or None
        return check_resolution(
            base, requested, transformer["sample_size"] * scale, scale * patch,
            f"VAE factor {scale} x patch size {patch}", largest,
        )  # fmt: skip

    def encoding_needs_denoiser(self, model_index: dict[str, Any]) -> bool:
        """Without T5 (``text_encoder_3`` saved as absent), ``encode_prompt`` sizes T5's zeros from the transformer."""
        return model_index.get("text_encoder_3") in (None, [None, None])

    def encode_text(self, pipe, captions: list[str], device: torch.device):
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=captions, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            )  # fmt: skip
        return embeds, pooled

    def prompt_token_mask(self, pipe, prompts: list[str]) -> torch.Tensor:
        """The text stream is CLIP's 77 token states (both CLIPs side by side) followed by T5's; without T5 its part
        is zeros the length of CLIP's, False."""
        clip = clip_mask(pipe.tokenizer, prompts)
        if pipe.text_encoder_3 is None:
            return torch.cat([clip, torch.zeros_like(clip)], dim=1)
        return torch.cat([clip, t5_mask(pipe.tokenizer_3, prompts, self.max_sequence_length)], dim=1)

    def search_tokenizer(self, pipe):
        """T5's, the longer part of the text stream; CLIP's when the pipeline has no T5."""
        return pipe.tokenizer if pipe.text_encoder_3 is None else pipe.tokenizer_3

    def predict(self, model, noisy, timesteps, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        return model(
            hidden_states=noisy.to(dtype), timestep=timesteps, encoder_hidden_states=cond.text.to(dtype),
            pooled_projections=cond.pooled.to(dtype), return_dict=False,
        )[0]  # fmt: skip
