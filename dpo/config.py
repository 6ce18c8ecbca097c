"""DPOConfig: every option of a safety-expert run, with the release's values as defaults (trl style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coprov2.errors import UserError, check_ranges
from coprov2.paths import user_cache_dir


def default_cache_dir() -> str:
    return user_cache_dir("dpo")


#: Where an expert's LoRA sits (``--target_modules``, suffixes of UNet module names): the release's four
#: projections of every attention, or cross-attention keys and values only (MACE's and UCE's choice).
PLACEMENTS: dict[str, list[str]] = {
    "all": ["to_q", "to_k", "to_v", "to_out.0"],
    "cross": ["attn2.to_k", "attn2.to_v"],
}

#: Numeric options: (lowest, highest, lowest excluded); NaN and infinities are refused for all of them.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "resolution": (8, None, False),
    "beta": (0, None, True),
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
    beta: float = field(default=5000.0, metadata={"help": "DPO beta (the release's beta_dpo)"})
    rank: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA alpha (default: rank, as the release)"}
    )
    target_modules: list[str] = field(
        default_factory=lambda: list(PLACEMENTS["all"]),
        metadata={
            "help": "UNet modules LoRA adapts, as suffixes of module names (default: the release's, every "
            "attention; attn2.to_k attn2.to_v: cross-attention keys and values only)"
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
            "help": "no, fp16 or bf16; auto = fp16 on GPU, no on CPU",
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
        """Every numeric option finite and in range, named as on the command line (before any scaling)."""
        check_ranges(self, RANGES)
        if (
            self.retain_weight > 0
            and self.retain_mode == "text"
            and not set(self.target_modules) <= set(PLACEMENTS["cross"])
        ):
            raise UserError(
                f"--retain_mode text reads the cross-attention key/value LoRAs only, and --target_modules "
                f"{' '.join(self.target_modules)} adapts more; use --target_modules {' '.join(PLACEMENTS['cross'])} "
                "or --retain_mode unet"
            )

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
