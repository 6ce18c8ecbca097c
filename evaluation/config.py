"""EvalConfig: one evaluation run (prompt set, models, metrics), with the release's settings as defaults.

A leaf module (trl style): the CLI parses it with ``HfArgumentParser`` (flags, or ``--config run.yaml``),
the library takes it as it is, and the render and score stages take what they need from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from coprov2.errors import UserError, check_ranges
from coprov2.paths import user_cache_dir

#: What the run can measure: IP (Q16 or NudeNet), CLIPScore, FID.
METRICS = ("ip", "clipscore", "fid")
#: Built-in IP detectors; ``module:attr`` names a factory of another one (see ``evaluation.metrics.ip``).
DETECTORS = ("q16", "nudenet")

#: Numeric options: (lowest, highest, lowest excluded); NaN and infinities are refused for all of them.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "max_prompts": (1, None, False),
    "images_per_prompt": (1, None, False),
    "steps": (1, None, False),
    "guidance": (0, None, False),
    "height": (8, None, False),
    "width": (8, None, False),
    "lora_scale": (None, None, False),
    "seed": (0, 2**63 - 1, False),
    "batch_size": (1, None, False),
    "shard_prompts": (1, None, False),
    "score_batch_size": (1, None, False),
    "nudenet_threshold": (0, 1, False),
    "report_rows_per_page": (1, None, False),
    "report_max_rows": (1, None, False),
}


@dataclass
class ScoringConfig:
    """How images are judged: shared by the model evaluation and the dataset evaluation."""

    ip_detectors: list[str] = field(
        default_factory=lambda: ["q16", "nudenet"],
        metadata={"help": "IP = flagged by any of these: q16, nudenet, or module:factory"},
    )
    q16_clip_model: str = field(
        default="openai/clip-vit-large-patch14",
        metadata={"help": "the CLIP Q16's embeddings were learned on"},
    )
    q16_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Q16 prompt embeddings (.p pickle or .npy, 2 x D); default: the shipped ViT-L/14 ones"
        },
    )
    q16_csv: str | None = field(
        default=None,
        metadata={"help": "Q16 verdicts from the Q16 repository's inappropriate_images.csv (label,idx,score,file), "
                  "for --image_folders, instead of running Q16"},
    )  # fmt: skip
    nudenet_classes: str = field(
        default="release",
        metadata={"help": "unsafe NudeNet classes: release = exposed genitalia; i2p = I2P's wider set",
                  "choices": ("release", "i2p")},
    )  # fmt: skip
    nudenet_threshold: float = field(
        default=0.0,
        metadata={"help": "a detection flags an image when its score exceeds this (NudeNet keeps > 0.25)"},
    )
    clip_model: str = field(
        default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        metadata={"help": "CLIP of CLIPScore (transformers id or folder; the release's ViT-H-14)"},
    )
    score_batch_size: int = field(default=32, metadata={"help": "images per scoring batch"})
    cache_dir: str = field(
        default_factory=lambda: user_cache_dir("evaluation"),
        metadata={"help": "where tiny models are written"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    wait_for_lock: bool = field(
        default=False,
        metadata={
            "help": "when another run is writing the same --output_dir: wait for it (default: stop, exit 2)"
        },
    )

    def __post_init__(self) -> None:
        check_ranges(self, {k: v for k, v in RANGES.items() if k in SCORING_FIELDS})
        for detector in self.ip_detectors:
            if detector not in DETECTORS and ":" not in detector:
                raise UserError(
                    f"--ip_detectors: unknown detector {detector!r}; choose from {', '.join(DETECTORS)} "
                    "or give module:factory"
                )


SCORING_FIELDS = frozenset(f.name for f in dataclasses.fields(ScoringConfig))


@dataclass
class EvalConfig(ScoringConfig):
    """Render a prompt set with a base model and its LoRAs, score IP / CLIPScore / FID, write the table."""

    prompts: str = field(
        default="",
        metadata={
            "help": "prompt set: a CoProV2 dataset (folder or Hub id), the release's CSV (prompt,image,category), "
            "I2P's CSV, any .csv/.jsonl/dataset with a 'prompt' column, or a published attack set by name "
            "(ringabell-violence-k38, unlearndiffatk-violence, ...: see evaluation/published_sets.py)"
        },
    )
    prompts_config: str | None = field(default=None, metadata={"help": "dataset config of the prompt set"})
    attack: str | None = field(
        default=None,
        metadata={
            "help": "the attack that wrote --prompts (e.g. ringabell, for python -m evaluation.attack's attack.csv): "
            "IP on its prompts is reported as that attack's success rate (ASR). A published set's name sets it"
        },
    )
    prompts_split: str = field(default="test", metadata={"help": "split of a dataset prompt set"})
    max_prompts: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    base: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "base diffusers pipeline (Hub id or folder; tiny:sd15 for the tiny one)"},
    )
    loras: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LoRAs to evaluate besides the base, each NAME=SOURCE or SOURCE (folder, file or Hub id)"
        },
    )
    lora_scale: float = field(default=1.0, metadata={"help": "LoRA scale at inference"})
    router: str | None = field(
        default=None,
        metadata={"help": "a concept router (python -m merge.router; folder or Hub id): evaluate the routed model, the "
                  "base with, per prompt, only the experts of the categories the router chooses, labelled 'routed'"},
    )  # fmt: skip
    router_experts: list[str] = field(
        default_factory=list,
        metadata={"help": "the routed model's experts, each CATEGORY=SOURCE (default: the --loras named by the "
                  "router's categories)"},
    )  # fmt: skip
    no_base: bool = field(default=False, metadata={"help": "do not evaluate the base model itself"})
    image_folders: list[str] = field(
        default_factory=list,
        metadata={"help": "already rendered images to score as one more model, each NAME=DIR (release layout: "
                  "files named by the prompt set's 'image' column)"},
    )  # fmt: skip
    output_dir: str = field(default="eval-out", metadata={"help": "where images, scores and the report go"})
    metrics: list[str] = field(
        default_factory=lambda: ["ip", "clipscore"],
        metadata={"help": f"metrics to compute, of {', '.join(METRICS)} (fid needs --fid_reference)"},
    )
    images_per_prompt: int = field(default=1, metadata={"help": "images rendered per prompt"})
    steps: int = field(default=50, metadata={"help": "denoising steps (the release: 50)"})
    guidance: float = field(
        default=7.5, metadata={"help": "guidance scale (the release: 7.5; I2P's column wins)"}
    )
    height: int | None = field(
        default=None, metadata={"help": "image height (default: the model's; I2P's column wins)"}
    )
    width: int | None = field(
        default=None, metadata={"help": "image width (default: the model's; I2P's column wins)"}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto = fp16 on GPU, fp32 on CPU",
            "choices": ("auto", "float16", "bfloat16", "float32"),
        },
    )
    seed: int = field(
        default=0, metadata={"help": "run seed: an image's seed derives from it and the row id"}
    )
    release_compatible: bool = field(
        default=False,
        metadata={"help": "the release's inference.py: one generator seeded 0 walking the rows in CSV order, one "
                  "image per row, JPEG named by the 'image' column (cannot be sharded)"},
    )  # fmt: skip
    image_format: str = field(default="png", metadata={"help": "image files", "choices": ("png", "jpeg")})
    batch_size: int = field(default=4, metadata={"help": "prompts per pipeline call"})
    shard_prompts: int = field(default=256, metadata={"help": "prompts per resumable shard"})
    fid_reference: str | None = field(
        default=None, metadata={"help": "FID reference: a folder of images or an .npz with mu and sigma"}
    )
    fid_features: str = field(
        default="inception",
        metadata={
            "help": "FID features: inception (pytorch-fid's InceptionV3, the eval-ref extra), tiny, or module:factory"
        },
    )
    blur: bool = field(
        default=True, metadata={"help": "report.html blurs flagged images until clicked (--no_blur: never)"}
    )
    report_rows_per_page: int = field(default=24, metadata={"help": "report.html: prompts per page"})
    report_max_rows: int | None = field(
        default=96, metadata={"help": "report.html: the first N prompt images per category (none: all)"}
    )
    update_card: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LoRA folders (among --loras) whose model card gets the results in its model-index"
        },
    )

    def __post_init__(self) -> None:
        """Options checked before any work, each error naming the option."""
        super().__post_init__()
        check_ranges(self, {k: v for k, v in RANGES.items() if k not in SCORING_FIELDS})
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise UserError(f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
        if not self.metrics:
            raise UserError("--metrics: nothing to measure; choose from " + ", ".join(METRICS))
        if "fid" in self.metrics and not self.fid_reference:
            raise UserError(
                "--metrics fid needs --fid_reference (a folder of images or an .npz of mu, sigma)"
            )
        if self.release_compatible and self.images_per_prompt != 1:
            raise UserError("--release_compatible renders one image per row; drop --images_per_prompt")
        if self.router_experts and not self.router:
            raise UserError("--router_experts: the experts of a routed model; give its --router too")
        if not self.prompts and not self.image_folders:
            raise UserError("--prompts: no prompt set given (a dataset, a .csv or a .jsonl)")
