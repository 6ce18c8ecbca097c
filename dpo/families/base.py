"""What a base model family is: the one place that knows how a denoiser is fed, noised and saved.

The trainer, the retain term, the encode cache, the merge's calibration pass and the toys ask a
:class:`Family` instead of branching on the model: how prompts are encoded (all of the pipeline's text
encoders, via its own ``encode_prompt``), how a VAE latent becomes what the denoiser reads, the noise
process and its regression target, how training timesteps are drawn, how the denoiser is called, where
LoRA goes (named placements), and which pipeline writes the LoRA file. A family instance is
``configure``-d once per run with the base's VAE and the run's family options, so every consumer sees the
same settings. One more family (Qwen-Image, say) is one more module with these methods.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from coprov2.errors import UserError

logger = logging.getLogger(__name__)

#: The release's Diffusion-DPO beta for SD1.5 (``beta_dpo``), the reference the flow families' betas are scaled from.
RELEASE_BETA = 5000.0


@dataclass
class Conditioning:
    """What the denoiser reads besides the noisy latent: token states ``[B, L, D]``, pooled ``[B, D']`` (SDXL,
    SD3, FLUX) and SDXL's size/crop ``time_ids`` ``[B, 6]``."""

    text: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def to(self, device: torch.device) -> Conditioning:
        return Conditioning(
            *(None if x is None else x.to(device) for x in (self.text, self.pooled, self.time_ids))
        )

    def rows(self, index: torch.Tensor) -> Conditioning:
        """The rows ``index`` of every part."""
        return Conditioning(
            *(None if x is None else x[index.to(x.device)] for x in (self.text, self.pooled, self.time_ids))
        )

    def cat(self, other: Conditioning) -> Conditioning:
        """Rows of ``self`` then of ``other`` (the retain rows ride in the pairs' batch)."""

        def joined(mine: torch.Tensor | None, theirs: torch.Tensor | None) -> torch.Tensor | None:
            return None if mine is None else torch.cat([mine, theirs])

        return Conditioning(
            joined(self.text, other.text),
            joined(self.pooled, other.pooled),
            joined(self.time_ids, other.time_ids),
        )


@dataclass(frozen=True)
class Family:
    """A base model family. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    #: The pipeline component the LoRA adapts and the trainer trains: ``unet`` or ``transformer``.
    denoiser: ClassVar[str]
    #: The preference objective: its tag and its name on the model card.
    objective: ClassVar[str]
    objective_title: ClassVar[str]
    #: Named LoRA placements (``--target_modules all``), as suffixes of the denoiser's module names.
    placements: ClassVar[dict[str, tuple[str, ...]]]
    #: The DPO beta when ``--beta`` is not given (see each family's docstring for why).
    default_beta: ClassVar[float]
    #: How the model card describes the objective.
    method: ClassVar[str]
    #: ``--mixed_precision auto`` on a GPU: the precision the family's diffusers scripts train in.
    gpu_precision: ClassVar[str] = "bf16"
    #: Whether the denoiser's text-input layers read the (first) text encoder's token states unchanged, as a
    #: UNet's cross-attention does: then ``--retain_mode text`` (a term on those layers' LoRAs) measures what the
    #: model reads.
    reads_encoder_states: ClassVar[bool] = False
    #: The token states the denoiser reads (its text stream), and all it reads of the prompt, for messages.
    token_states: ClassVar[str] = "the text encoder's token states"
    prompt_states: ClassVar[str] = token_states

    #: The ``DPOConfig`` options this family takes beyond the common ones (the others refuse them).
    options: ClassVar[tuple[str, ...]] = ()

    #: Set by :meth:`configure` from the base's VAE config.
    scaling_factor: float = 1.0
    shift_factor: float | None = None

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        """Whether a pipeline's ``model_index.json`` belongs to this family."""
        raise NotImplementedError

    def configure(self, vae_config: dict[str, Any], config: Any) -> Family:
        """This family with the base's latent scaling and the run's family options (``DPOConfig``)."""
        return dataclasses.replace(
            self,
            scaling_factor=float(vae_config.get("scaling_factor") or 0.18215),
            shift_factor=vae_config.get("shift_factor"),
            **self._options(config),
        )

    def _options(self, config: Any) -> dict[str, Any]:
        return {}

    def settings(self) -> dict[str, Any]:
        """The family's run options, for the model card and the cache key (empty for families without any)."""
        return {}

    # Loading ---------------------------------------------------------------------------------------------
    def load_denoiser(self, base: str, revision: str | None, dtype: torch.dtype) -> torch.nn.Module:
        raise NotImplementedError

    def load_scheduler(self, base: str, revision: str | None):
        raise NotImplementedError

    def resolution(self, base: str, revision: str | None, requested: int | None, vae_config: dict) -> int:
        """The training resolution, checked against the base's VAE and denoiser (a ``UserError`` if it cannot be)."""
        raise NotImplementedError

    # Inputs ----------------------------------------------------------------------------------------------
    def encode_text(
        self, pipe, captions: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(token states, pooled or None)`` from the pipeline's own ``encode_prompt``, every text encoder."""
        raise NotImplementedError

    def inference_conditioning(self, pipe, prompts: list[str], device, resolution: int) -> Conditioning:
        """What the denoiser reads for ``prompts`` when the pipeline renders them at ``resolution`` (the merge's
        calibration pass feeds the denoiser so)."""
        text, pooled = self.encode_text(pipe, prompts, device)
        return Conditioning(text, pooled)

    def prompt_token_mask(self, pipe, prompts: list[str]) -> torch.Tensor:
        """``[P, L]`` over the token states the text-stream layers (``placements["cross"]``) read: True on each
        prompt's own tokens, False on what every prompt shares (start token, padding)."""
        raise NotImplementedError

    def search_tokenizer(self, pipe):
        """The tokenizer feeding the token states the denoiser reads (Ring-A-Bell draws its candidates from it)."""
        return pipe.tokenizer

    def direct_text_encoder(self, pipe):
        """The text encoder whose last hidden states are, unchanged and alone, what the denoiser reads (SD1.x/2.x's
        CLIP), so a search can feed it token ids as the authors do; None where ``encode_prompt`` joins encoders."""
        return None

    def encoding_needs_denoiser(self, model_index: dict[str, Any]) -> bool:
        """Whether the pipeline's ``encode_prompt`` reads its denoiser (then the encoder pipeline keeps it)."""
        return False

    def time_ids(self, pipe, original_and_crop: list[tuple], resolution: int) -> torch.Tensor | None:
        """Per-image extra conditioning computed from the image (SDXL's size and crop ids); None elsewhere."""
        return None

    def to_model_space(self, latents: torch.Tensor) -> torch.Tensor:
        """A VAE latent as the denoiser reads it: ``(latent - shift) * scale``."""
        if self.shift_factor is not None:
            latents = latents - self.shift_factor
        return latents * self.scaling_factor

    def pipeline_kwargs(self) -> dict[str, Any]:
        """What a pipeline call needs to render as the run encodes (T5's length for the flow families)."""
        return {}

    @property
    def sampling_guidance(self) -> float:
        """The pipeline's ``guidance_scale`` that samples the model as it is trained: no classifier-free guidance
        (1.0), or, for a guidance-distilled model, the value its guidance embedding is trained at."""
        return 1.0

    def from_pipeline_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """A pipeline's ``output_type="latent"`` result as ``[B, C, h, w]`` model-space latents."""
        return latents

    # Noise process ---------------------------------------------------------------------------------------
    def sample_timesteps(self, scheduler, size: int, generator: torch.Generator, config: Any) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(
        self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def target(
        self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def predict(
        self, model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, dtype: torch.dtype
    ) -> torch.Tensor:
        """The denoiser's output for ``noisy`` ``[B, C, h, w]``, in the same layout."""
        raise NotImplementedError

    # LoRA ------------------------------------------------------------------------------------------------
    def target_modules(self, requested: list[str] | None) -> list[str]:
        """``--target_modules``: a placement's name expands to its module suffixes; None is ``all``."""
        requested = requested or ["all"]
        if len(requested) == 1 and requested[0] in self.placements:
            return list(self.placements[requested[0]])
        return list(requested)

    def lora_layers(self, model) -> dict[str, torch.Tensor]:
        """The adapter's tensors in the key layout the family's pipelines load: peft's, as diffusers' SD3 and FLUX
        training scripts save them (``convert_state_dict_to_diffusers`` would rename only the image stream's
        projections, and ``load_lora_weights`` would then skip them)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)

    def check_target_modules(self, base: str, revision: str | None, targets: list[str]) -> None:
        """Every ``--target_modules`` suffix names a module of the base's denoiser (built empty from its config,
        no weights read), else one line naming them and what this family offers; before any work, so a UNet's
        ``attn2.to_k`` given for a transformer (or the reverse) never reaches peft's traceback."""
        from accelerate import init_empty_weights

        denoiser = self.denoiser_class(base, revision)
        config = denoiser.load_config(base, subfolder=self.denoiser, revision=revision)
        with init_empty_weights():
            names = [name for name, _ in denoiser.from_config(config).named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            offered = "; ".join(f"{name}: {' '.join(suffixes)}" for name, suffixes in self.placements.items())
            raise UserError(
                f"--target_modules {' '.join(missing)}: no module of {base}'s {self.denoiser} ({self.name} family) "
                f"ends so; name a placement ({offered}) or suffixes of its module names"
            )

    def denoiser_class(self, base: str, revision: str | None) -> type:
        """The diffusers class of the base's denoiser, as its ``model_index.json`` names it."""
        import diffusers
        from diffusers import DiffusionPipeline

        return getattr(diffusers, DiffusionPipeline.load_config(base, revision=revision)[self.denoiser][1])

    def save_lora_weights(self, pipeline_class: type, folder, layers: dict, metadata: dict) -> None:
        """The diffusers LoRA file that ``pipe.load_lora_weights`` of this family's pipelines reads."""
        pipeline_class.save_lora_weights(
            folder,
            **{f"{self.denoiser}_lora_layers": layers, f"{self.denoiser}_lora_adapter_metadata": metadata},
        )


def check_resolution(
    base: str, requested: int | None, native: int, multiple: int, why: str, largest: int | None = None
) -> int:
    """``requested`` (default ``native``) if the base can render it: a multiple of ``multiple`` (``why`` says what
    makes it), at most ``largest``; else a ``UserError`` that names the base and what it accepts."""
    resolution = requested or native
    if resolution % multiple or (largest is not None and resolution > largest):
        bound = f" and at most {largest}" if largest is not None else ""
        raise UserError(
            f"resolution {resolution} does not fit base model {base}: it must be a multiple of {multiple} "
            f"({why}){bound}; the model's native resolution is {native}"
        )
    if resolution != native:
        logger.warning("%s at %d px: its native resolution is %d px", base, resolution, native)
    return resolution


def clip_mask(tokenizer, prompts: list[str]) -> torch.Tensor:
    """``[P, 77]``: each prompt's own CLIP tokens (words and end token); not the start token nor the padding."""
    mask = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).attention_mask.bool()
    mask[:, 0] = False
    return mask


def t5_mask(tokenizer, prompts: list[str], length: int) -> torch.Tensor:
    """``[P, length]``: each prompt's own T5 tokens (words and end token), not the padding."""
    return tokenizer(
        prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).attention_mask.bool()
