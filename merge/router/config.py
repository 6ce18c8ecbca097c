"""RouterConfig: one router training run (``python -m merge.router``), a leaf module as trl's script configs are."""

from __future__ import annotations

from dataclasses import dataclass, field

from coprov2.errors import UserError, check_ranges
from coprov2.paths import check_model
from dpo.config import default_cache_dir

#: The router's heads (``benchmarks/router_heads.py`` compares them): ``prototype`` scores a prompt by its cosine to
#: the nearest concept centroid of each category (nothing else learned: far from every concept, a prompt gets no
#: category); ``contrastive`` (Latent Guard's idea) by its cosine to the nearest concept in a learned embedding
#: (InfoNCE over the concepts and a "no concept" row); ``linear`` and ``mlp`` are one-vs-rest classifiers.
HEADS = ("prototype", "contrastive", "linear", "mlp")

#: Numeric options: (lowest, highest, lowest excluded).
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "hidden_size": (1, None, False),
    "steps": (1, None, False),
    "learning_rate": (0, None, True),
    "weight_decay": (0, None, False),
    "temperature": (0, None, True),
    "calibration_share": (0, 1, True),
    "batch_size": (1, None, False),
    "seed": (0, 2**63 - 1, False),
    "max_sequence_length": (1, None, False),
}


@dataclass
class RouterConfig:
    """Train a concept router on a CoProV2 dataset: which safety experts each prompt needs."""

    dataset: str = field(default="", metadata={"help": "CoProV2 dataset (folder or Hub id) to learn from"})
    dataset_config: str | None = field(default=None, metadata={"help": "dataset config name"})
    base: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={
            "help": "the base pipeline whose text encoder(s) the router reads (tiny:sd15 for the tiny one)"
        },
    )
    revision: str | None = field(default=None, metadata={"help": "revision of --base"})
    output_dir: str = field(default="router", metadata={"help": "where the router, its card and summary go"})
    categories: list[str] = field(
        default_factory=list,
        metadata={"help": "the categories to route (default: every category of the train split)"},
    )
    neutral_prompts: str | None = field(
        default=None,
        metadata={"help": "prompts of no category (.txt, one per line; default: the shipped "
                  "dpo/data/neutral_prompts.txt), split between training, calibration and the card's rate"},
    )  # fmt: skip
    head: str = field(
        default="prototype", metadata={"help": "the head on the text features", "choices": HEADS}
    )
    hidden_size: int = field(
        default=256, metadata={"help": "mlp: hidden width; contrastive: embedding width"}
    )
    steps: int = field(default=400, metadata={"help": "contrastive/linear/mlp: full-batch AdamW steps"})
    learning_rate: float = field(
        default=3e-3, metadata={"help": "contrastive/linear/mlp: AdamW learning rate"}
    )
    weight_decay: float = field(default=1e-3, metadata={"help": "contrastive/linear/mlp: AdamW weight decay"})
    temperature: float = field(default=0.1, metadata={"help": "contrastive: InfoNCE temperature"})
    calibration_share: float = field(
        default=0.2,
        metadata={"help": "share of each category's train prompts held out to set its threshold"},
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={
            "help": "SD3/FLUX: T5 tokens of the features (default: the family's, as dpo.train encodes: FLUX 512, SD3 77)"
        },
    )
    batch_size: int = field(default=64, metadata={"help": "prompts per text-encoder call"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the head's init and its training"})
    cache_dir: str = field(
        default_factory=default_cache_dir,
        metadata={"help": "where text features (resumable, shared between runs) and tiny models go"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "push the router to this Hub repo (private)"}
    )
    hub_public: bool = field(default=False, metadata={"help": "make the pushed repo public"})
    dry_run: bool = field(default=False, metadata={"help": "print the Hub calls instead of pushing"})

    def __post_init__(self) -> None:
        check_ranges(self, RANGES)
        if self.head not in HEADS:
            raise UserError(f"--head {self.head!r} is unknown; choose from {', '.join(HEADS)}")
        if not self.dataset:
            raise UserError("--dataset: no dataset given (a CoProV2 folder or Hub id)")
        check_model(self.base, "--base")
