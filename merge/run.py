"""MergeConfig and ``run_merge``: experts in, one merged diffusers LoRA with its card out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cards.model_card import lora_model_card
from cards.public import public_name, public_settings
from cards.push import push_folder
from coprov2.errors import UserError, check_finite, check_ranges
from coprov2.paths import check_hub_access, check_model
from coprov2.tiny import resolve_tiny_model
from dpo.config import default_cache_dir
from dpo.families import family_of
from dpo.retain import NEUTRAL_PROMPTS
from merge.calibrate import (
    DEFAULT_TIMESTEPS,
    activation_scores,
    calibration_prompts,
    calibration_prompts_by_category,
    gram_statistics,
    own_category_prompts,
)
from merge.experts import Expert, check_compatible, load_expert, save_merged
from merge.methods import METHODS, NEEDS_CALIBRATION, merge_experts


@dataclass
class MergeConfig:
    """Merge E LoRA safety experts into one LoRA (Co-Merge or a baseline)."""

    experts: list[str] = field(
        default_factory=list, metadata={"help": "expert folders, .safetensors files or Hub ids"}
    )
    base: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "the base pipeline the experts were trained on (tiny:sd15 for the tiny one)"},
    )
    method: str = field(
        default="regmean",
        metadata={
            "help": "merge method (default: the best merge of benchmarks/merge_scaling.py, docs/merge.md)",
            "choices": METHODS,
        },
    )
    output_dir: str = field(default="merged", metadata={"help": "where the merged LoRA and its card go"})
    calibration: str | None = field(
        default=None,
        metadata={"help": "calibration prompts: a CoProV2 dataset (folder/Hub id) or a .txt file"},
    )
    calibration_per_category: int = field(default=8, metadata={"help": "prompts per category from a dataset"})
    calibration_scope: str = field(
        default="auto",
        metadata={
            "help": "measure every expert on every category's prompts (all) or on its own category's (own); "
            "auto: own for regmean, all for Co-Merge",
            "choices": ("auto", "all", "own"),
        },
    )
    preserve_prompts: str | None = field(
        default=None,
        metadata={
            "help": "regmean: prompts (.txt, one per line) whose outputs the merge should leave as the base's "
            "(default: the shipped dpo/data/neutral_prompts.txt)"
        },
    )
    regmean_lambda: float = field(
        default=1.0, metadata={"help": "regmean: weight of the preserve prompts' inputs (lambda)"}
    )
    regmean_epsilon: float = field(
        default=1e-4, metadata={"help": "regmean: ridge, relative to the system's mean diagonal"}
    )
    keep_energy: float = field(
        default=0.99,
        metadata={"help": "regmean: smallest rank (up to --rank) keeping this share of every layer's energy"},
    )
    text_tokens: str = field(
        default="all",
        metadata={
            "help": "regmean: cross-attention key/value inputs from every token (all) or without the start "
            "token and padding, which every prompt shares (prompt)",
            "choices": ("all", "prompt"),
        },
    )
    normalize_scores: bool = field(
        default=True,
        metadata={"help": "Co-Merge: compare each expert's scores relative to its own mean in the layer"},
    )
    calibration_timesteps: list[int] = field(
        default_factory=lambda: list(DEFAULT_TIMESTEPS),
        metadata={"help": "timesteps the calibration inputs are noised to"},
    )
    resolution: int | None = field(
        default=None, metadata={"help": "calibration resolution (default: native)"}
    )
    rank: int | None = field(
        default=None, metadata={"help": "rank of SVD-based merges (default: sum of ranks)"}
    )
    density: float = field(default=0.5, metadata={"help": "TIES/DARE density"})
    seed: int = field(default=0, metadata={"help": "seed of calibration noise and DARE"})
    cache_dir: str = field(
        default_factory=default_cache_dir, metadata={"help": "where tiny models are written"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "push the merged LoRA to this Hub repo (private)"}
    )
    hub_public: bool = field(default=False, metadata={"help": "make the pushed repo public"})
    dry_run: bool = field(default=False, metadata={"help": "print the Hub calls instead of pushing"})

    def __post_init__(self) -> None:
        check_ranges(self, RANGES)
        if self.method not in METHODS:  # the CLI's choices do not guard the library or a recipe
            raise UserError(f"--method {self.method!r} is unknown; choose from {', '.join(METHODS)}")
        if self.calibration_scope == "auto":
            self.calibration_scope = "own" if self.method == "regmean" else "all"
        if self.preserve_prompts is not None and not Path(self.preserve_prompts).is_file():
            raise UserError(f"--preserve_prompts {self.preserve_prompts}: no such file")
        for step in self.calibration_timesteps:
            check_finite("calibration_timesteps", step, 0, 999)
        check_model(self.base, "--base")


#: Numeric options: (lowest, highest, lowest excluded); NaN and infinities are refused for all of them.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "calibration_per_category": (1, None, False),
    "resolution": (8, None, False),
    "rank": (1, None, False),
    "density": (0, 1, True),
    "regmean_lambda": (0, None, False),
    "regmean_epsilon": (0, None, True),
    "keep_energy": (0, 1, True),
    "seed": (0, 2**63 - 1, False),
}


def family_options(base: str, experts: list[Expert]) -> dict[str, Any]:
    """The base family's options the experts were trained with (T5's length on SD3/FLUX), for the calibration
    pass to feed the denoiser as training did; refused when the experts disagree."""
    options: dict[str, Any] = {}
    for name in family_of(base).options:
        values = {json.dumps(e.settings.get(name)) for e in experts if e.settings.get(name) is not None}
        if len(values) > 1:
            raise UserError(
                f"the experts were trained with different {name} ({', '.join(sorted(values))}); merge experts trained alike"
            )
        if values:
            options[name] = json.loads(values.pop())
    return options


def run_merge(config: MergeConfig) -> dict[str, Any]:
    """Load, check, (calibrate,) merge, save and card; returns a summary of what was done."""
    if not config.experts:
        raise UserError("give at least one expert (--experts A B ...)")
    if config.method in NEEDS_CALIBRATION and not config.calibration:
        raise UserError(
            f"--method {config.method} needs --calibration (a CoProV2 dataset or a .txt of prompts)"
        )
    check_hub_access(config.base, "--base")
    base = resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models")
    experts = [load_expert(source) for source in config.experts]
    check_compatible(experts, config.base)
    row_scores = input_scores = grams = None
    prompts: list[str] = []
    preserve: list[str] = []
    info: dict[str, float] = {}
    if config.method in NEEDS_CALIBRATION:
        prompts, expert_prompts = _calibration(config, experts)
        options = {
            "timesteps": tuple(config.calibration_timesteps),
            "resolution": config.resolution,
            "seed": config.seed,
            "progress": config.progress,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "expert_prompts": expert_prompts,
            "family_options": family_options(base, experts),
        }
        if config.method == "regmean":
            preserve = calibration_prompts(config.preserve_prompts or str(PRESERVE_PROMPTS))
            grams = gram_statistics(
                base, experts, config.experts, prompts, preserve_prompts=preserve, text_tokens=config.text_tokens,
                **options,
            )  # fmt: skip
        else:
            row_scores, input_scores = activation_scores(base, experts, config.experts, prompts, **options)
    merged = merge_experts(
        experts,
        config.method,
        row_scores=row_scores,
        input_scores=input_scores,
        rank=config.rank,
        density=config.density,
        seed=config.seed,
        normalize=config.normalize_scores,
        grams=grams,
        regmean_lambda=config.regmean_lambda,
        regmean_epsilon=config.regmean_epsilon,
        keep_energy=config.keep_energy,
        info=info,
    )
    folder = Path(config.output_dir)
    save_merged(merged, base, folder, experts[0].target_modules)
    rank = next(iter(merged.values()))[0].shape[0]
    summary = {
        "method": config.method,
        "experts": [e.name for e in experts],
        "rank": rank,
        "calibration_prompts": len(prompts),
        "preserve_prompts": len(preserve),
        **info,
        "settings": public_settings(
            {k: v for k, v in asdict(config).items() if k not in ("progress", "dry_run", "cache_dir")}
        ),
    }
    if row_scores is not None:
        wins = torch.stack(
            [scores.argmax(0).bincount(minlength=len(experts)) for scores in row_scores.values()]
        ).sum(0)
        summary["channels_won"] = {e.name: int(n) for e, n in zip(experts, wins, strict=True)}
    (folder / "merge_summary.json").write_text(json.dumps(summary, indent=2))
    _card(config, summary).save(folder / "README.md")
    if config.push_to_hub:
        push_folder(
            folder,
            config.push_to_hub,
            repo_type="model",
            gated=None,
            public=config.hub_public,
            dry_run=config.dry_run,
        )
    return summary


def _calibration(config: MergeConfig, experts: list[Expert]) -> tuple[list[str], list[list[int]] | None]:
    """The calibration prompts and, for ``--calibration_scope own``, each expert's own category's indices."""
    if config.calibration_scope == "all":
        return calibration_prompts(config.calibration, config.calibration_per_category), None
    if Path(config.calibration).suffix == ".txt":
        raise UserError(
            "--calibration_scope own needs a dataset with categories as --calibration, not a .txt"
        )
    by_category = calibration_prompts_by_category(config.calibration, config.calibration_per_category)
    for expert in experts:
        if expert.category not in by_category:
            raise UserError(
                f"--calibration_scope own: expert {expert.name} names category {expert.category!r} (training_summary.json), "
                f"which {config.calibration} does not hold (it holds {', '.join(sorted(by_category))}); "
                "use --calibration_scope all"
            )
    return own_category_prompts(by_category, [expert.category for expert in experts])


#: The shipped neutral prompts of ``regmean`` (everyday scenes, none near a safety category): the same list
#: the experts' output-preserving term keeps them on (``dpo --retain_prompts neutral``).
PRESERVE_PROMPTS = NEUTRAL_PROMPTS

_DEFINITIONS = {
    "comerge": "Co-Merge (rows): per adapted layer and output channel, the expert with the largest mean |scale_e B_e A_e x_e| "
    "over the calibration inputs wins; the merged LoRA is the exact row-masked concatenation of rank E*r.",
    "comerge_svd": "Co-Merge (weights): every weight of the delta from the expert with the largest mean |delta_e[o,i] x_e[i]|, "
    "then a truncated SVD to the chosen rank.",
    "regmean": "Closed-form fusion (RegMean / MACE's fusion): per adapted layer, the delta that best reproduces "
    "every expert on its own calibration inputs while changing little on the preserve prompts', "
    "(sum_e delta_e G_e)(sum_e G_e + lambda G0 + eps I)^-1 with G = X^T X / n, solved in float64, then a "
    "truncated SVD at the smallest rank keeping --keep_energy of every layer's energy.",
    "linear": "Linear average of the experts' deltas, exact as a concatenation with weights 1/E.",
    "sum": "Concatenation: the sum of the experts' deltas.",
    "ties": "TIES (peft.utils.merge_utils.ties) on the deltas, then a truncated SVD.",
    "dare_linear": "DARE (peft.utils.merge_utils.dare_linear) on the deltas, seeded, then a truncated SVD.",
    "dare_ties": "DARE + TIES (peft.utils.merge_utils.dare_ties) on the deltas, seeded, then a truncated SVD.",
}


#: What ``benchmarks/merge_scaling.py`` found (README, "Does merging scale?"); every merged card says it.
SCALING_NOTE = (
    'In our toy benchmark (`benchmarks/merge_scaling.py`, 3 seeds, docs/merge.md "Does merging scale?"), the '
    "closed-form fusion (`regmean`, the default) was the best merge at 7 and 14 experts, and it still "
    "fell short of the experts' own effect. It kept 0.69-0.78 of the experts' gain at 7 experts, with 1.2-1.3x "
    "their drift on unrelated prompts, and 0.48 at 28 (only the plain sum kept more, 0.54-0.60, at 6x the "
    "drift). Where half the experts reverse the other half's "
    "colours (14 experts), it kept 0.27-0.35; Co-Merge and the peft baselines kept none. One LoRA trained on "
    "all categories at equal compute removed more (1.0-1.5x) and changed unrelated prompts 2.4-7.9x as much. "
    "Experts trained with the output-preserving term (dpo.train --retain_weight) drifted 5-8% less "
    "(cross-attention experts) to 29% less (every layer) and merged no better (`regmean` at 7 experts over 3 "
    "seeds: 0.73-0.78, against 0.69-0.78 without it; 0.33 / 0.52 at 14 / 28, one seed). "
    "Evaluate this merge on your own prompts (`python -m evaluation`) before relying on it."
)


def _calibration_text(config: MergeConfig) -> str:
    if config.method not in NEEDS_CALIBRATION:
        return ""
    scope = "its own category's prompts" if config.calibration_scope == "own" else "every category's prompts"
    if config.method == "regmean":
        preserve = (
            public_name(config.preserve_prompts)
            if config.preserve_prompts
            else "the shipped dpo/data/neutral_prompts.txt"
        )
        return (
            f" Calibration: {public_name(config.calibration)}, timesteps {config.calibration_timesteps}; each expert's inputs "
            f"from {scope}, preserve prompts from {preserve} (lambda {config.regmean_lambda}, cross-attention "
            f"key/value tokens: {config.text_tokens})."
        )
    scores = " Scores normalised per expert (by its mean in the layer)." if config.normalize_scores else ""
    return (
        f" Calibration: {public_name(config.calibration)}, timesteps {config.calibration_timesteps}; each expert scored on "
        f"{scope}.{scores}"
    )


def _card(config: MergeConfig, summary: dict[str, Any]):
    measured = {"merged rank": summary["rank"], "calibration prompts": summary["calibration_prompts"]}
    if "kept_energy" in summary:
        measured["preserve prompts"] = summary["preserve_prompts"]
        measured["energy kept by the LoRA (all layers)"] = round(summary["kept_energy"], 4)
        measured["energy kept by the LoRA (worst layer)"] = round(summary["kept_energy_min"], 4)
    measured.update({f"channels won by {name}": n for name, n in summary.get("channels_won", {}).items()})
    return lora_model_card(
        title=f"Merged safety LoRA ({config.method})",
        summary=f"{len(config.experts)} safety experts for `{public_name(config.base)}` merged into one LoRA with `{config.method}`: "
        + ", ".join(f"`{name}`" for name in summary["experts"])
        + ".",
        method=_DEFINITIONS[config.method] + _calibration_text(config),
        base_model=config.base,
        settings={k: v for k, v in summary["settings"].items() if v is not None and k != "experts"},
        measured=measured,
        tags=["merge", config.method],
        repo_or_folder=config.push_to_hub,
        expectations=SCALING_NOTE,
    )
