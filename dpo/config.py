"""DPOConfig: every option of a safety-expert run, with the release's values as defaults (trl style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from coprov2.errors import UserError, check_ranges
from coprov2.paths import user_cache_dir


def default_cache_dir() -> str:
    return user_cache_dir("dpo")


#: Named LoRA placements (``--target_modules all``/``cross``): each base family (``dpo/families``) says which of
#: its denoiser's modules they are.
PLACEMENT_NAMES = ("all", "cross")

#: Numeric options: (lowest, highest, lowest excluded); NaN and infinities are refused for all of them.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "resolution": (8, None, False),
    "beta": (0, None, True),
    "max_sequence_length": (1, 512, False),
    "guidance_scale": (0, None, False),
    "rank": (1, None, False),
    "lora_alpha": (0, None, True),
    "learning_rate": (0, None, True),
    "adam_weight_decay": (0, None, False),
    "max_grad_norm": (0, None, True),
    "train_batch_size": (1, None, False),
    "gradient_accumulation_steps": (1, None, False),
    "max_train_steps": (1, None, False),
    "lr_warmup_steps": (0, None, False),
    "timestep_min": (0, None, False),
    "timestep_max": (1, None, False),
    "proportion_empty_prompts": (0, 0.999, False),
    "retain_weight": (0, None, False),
    "retain_share": (0, 1, True),
    "retain_samples": (1, None, False),
    "retain_sample_steps": (1, None, False),
    "retain_guidance": (0, None, False),
    "seed": (0, 2**63 - 1, False),
    "checkpointing_steps": (1, None, False),
    "checkpoints_total_limit": (1, None, False),
    "logging_steps": (1, None, False),
}


@dataclass
class DPOConfig:
    """A Diffusion-DPO LoRA safety expert: caption = unsafe prompt, winner = safe image, loser = unsafe image."""

    dataset: str = field(
        default="coprov2-out/dataset",
        metadata={
            "help": "CoProV2 dataset (folder or Hub repo id), or the release layout (folder or CoProv2_<split>.csv)"
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "dataset config (default: all categories)"}
    )
    split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "split for held-out implicit accuracy at the end (skipped if absent)"},
    )
    category: str = field(
        default="all",
        metadata={
            "help": "category to train on; 'all' = the All-single baseline; 'each' = one expert per category in turn"
        },
    )
    base: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={
            "help": "base diffusers pipeline (Hub id or folder; tiny:sd15 / tiny:sdxl for tiny random ones)"
        },
    )
    revision: str | None = field(default=None, metadata={"help": "revision of the base model"})
    output_dir: str = field(
        default="experts", metadata={"help": "where the expert (or one folder per category) goes"}
    )
    resolution: int | None = field(
        default=None,
        metadata={"help": "training resolution in pixels (default: the base model's native one)"},
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "DPO beta (default per base family: 5000, the release's beta_dpo, for UNets; for flow "
            "transformers the same mean weight on velocity errors, 565 for SD3, 1667 for FLUX; docs/dpo.md)"
        },
    )
    rank: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA alpha (default: rank, as the release)"}
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={
            "help": "modules LoRA adapts: 'all' (every attention projection: the release's placement on UNets; on "
            "SD3/FLUX both streams' projections), 'cross' (cross-attention keys and values: attn2.to_k attn2.to_v on "
            "UNets, the text stream's add_k_proj add_v_proj on SD3/FLUX), or suffixes of module names"
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    scale_lr: bool = field(
        default=True, metadata={"help": "scale lr by batch size x accumulation x processes"}
    )
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    train_batch_size: int = field(default=4, metadata={"help": "pairs per process per micro-batch"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-batches per optimizer step"})
    max_train_steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    lr_scheduler: str = field(
        default="constant_with_warmup", metadata={"help": "diffusers.optimization scheduler name"}
    )
    lr_warmup_steps: int = field(default=500, metadata={"help": "warmup steps"})
    timestep_min: int = field(default=0, metadata={"help": "smallest training timestep"})
    timestep_max: int | None = field(
        default=None, metadata={"help": "largest training timestep + 1 (default: all)"}
    )
    weighting_scheme: str | None = field(
        default=None,
        metadata={
            "help": "flow bases: the training timesteps' density, as diffusers' scripts name it (default: "
            "logit_normal for SD3, none = uniform for FLUX, their scripts' defaults)",
            "choices": ("none", "logit_normal", "mode"),
        },
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={
            "help": "flow bases: T5 tokens per caption (default: 77 for SD3, 512 for FLUX, as diffusers' scripts)"
        },
    )
    guidance_scale: float = field(
        default=3.5,
        metadata={
            "help": "FLUX.1-dev: the distilled guidance value the transformer is trained at (diffusers' FLUX "
            "script's default); bases without a guidance embedding ignore it"
        },
    )
    proportion_empty_prompts: float = field(
        default=0.2,
        metadata={"help": "share of pairs trained with the empty caption (the release's default)"},
    )
    retain_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight (lambda) of the output-preserving term: mean squared difference between the expert's "
            "and the base's noise predictions on retain captions (DUO); 0 turns it off"
        },
    )
    retain_prompts: str = field(
        default="neutral",
        metadata={
            "help": "retain captions: 'neutral' (the shipped everyday list), 'other' (the other categories' "
            "captions of the dataset) or a .txt file, one caption per line"
        },
    )
    retain_mode: str = field(
        default="unet",
        metadata={
            "help": "unet: the noise predictions on the base's own samples of the retain captions; text (LoRAs on "
            "attn2.to_k attn2.to_v only): the change those LoRAs make to the retain captions' keys and values, "
            "no UNet pass",
            "choices": ("unet", "text"),
        },
    )
    retain_share: float = field(
        default=0.25,
        metadata={"help": "retain samples per micro-batch, as a share of its pairs (at least one)"},
    )
    retain_samples: int = field(
        default=2, metadata={"help": "the base's samples per retain caption, drawn once and cached"}
    )
    retain_sample_steps: int = field(default=25, metadata={"help": "inference steps of the retain samples"})
    retain_guidance: float = field(default=7.5, metadata={"help": "guidance scale of the retain samples"})
    seed: int = field(
        default=0, metadata={"help": "seed of data order, noise and timesteps (a function of seed and step)"}
    )
    random_flip: bool = field(
        default=True,
        metadata={
            "help": "flip each training image left-right with probability 0.5, winner and loser independently "
            "(the release's default); both orientations are encoded into the cache"
        },
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "no, fp16 or bf16; auto = on GPU fp16 for UNets (the release's), bf16 for SD3/FLUX (diffusers' "
            "scripts'), no on CPU",
            "choices": ("auto", "no", "fp16", "bf16"),
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for UNet activation memory"}
    )
    checkpointing_steps: int = field(
        default=500, metadata={"help": "save a resumable checkpoint every N steps"}
    )
    checkpoints_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=True, metadata={"help": "resume from the latest checkpoint in output_dir"})
    cache_dir: str = field(
        default_factory=default_cache_dir, metadata={"help": "where cached latents/text embeddings live"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log metrics every N steps"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "push the expert to this Hub model repo (private)"}
    )
    hub_public: bool = field(default=False, metadata={"help": "make the pushed repo public"})
    dry_run: bool = field(default=False, metadata={"help": "print the Hub calls instead of pushing"})

    def __post_init__(self) -> None:
        """Every numeric option finite and in range, named as on the command line (before any scaling). What
        depends on the base (placements, the family's options) is checked by ``dpo.trainer`` before any work."""
        check_ranges(self, RANGES)

    def for_family(self, family) -> DPOConfig:
        """This config with what its base family decides (``dpo.families``): ``--beta``'s default and
        ``--target_modules`` expanded to module suffixes; options the family cannot take are refused."""
        targets = family.target_modules(self.target_modules)
        cross = list(family.placements["cross"])
        if (
            self.retain_weight > 0
            and self.retain_mode == "text"
            and not (family.reads_encoder_states and set(targets) <= set(cross))
        ):
            fix = f"use --target_modules cross ({' '.join(cross)}) or " if family.reads_encoder_states else ""
            raise UserError(
                f"--retain_mode text reads the cross-attention key/value LoRAs only (on the text encoder's states, "
                f"as UNets have them), and --target_modules {' '.join(targets)} on a {family.name} base adapts "
                f"{'more' if family.reads_encoder_states else 'layers that read other states'}; {fix}use --retain_mode unet"
            )
        return replace(self, beta=self.beta or family.default_beta, target_modules=targets)

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else float(self.rank)

    def hyperparameters(self) -> dict[str, Any]:
        """What determines the trained weights (for the card and the checkpoint guard)."""
        skip = {
            "output_dir",
            "cache_dir",
            "progress",
            "push_to_hub",
            "hub_public",
            "dry_run",
            "resume",
            "logging_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
        }
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def expert_dir(self, category: str) -> Path:
        return Path(self.output_dir) / category if self.category == "each" else Path(self.output_dir)
