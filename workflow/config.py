"""WorkflowConfig: one recipe for the paper's workflow, read from a YAML file (a leaf module, trl style).

A recipe names where the dataset comes from (exactly one of ``dataset``, ``build``, ``release``), the base
model, and one mapping per tool whose keys are that tool's own options (``DPOConfig``, ``MergeConfig``,
``EvalConfig``): the same names as its CLI flags, checked against it before any work. What the workflow
sets itself (dataset, category, base, output folders, the LoRAs to evaluate) cannot be set there.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coprov2.config import PRESETS, BuildConfig, check_options
from coprov2.errors import UserError, load_yaml_file
from dpo.config import DPOConfig
from evaluation.attack import AttackConfig
from evaluation.config import EvalConfig
from merge.router.config import RouterConfig
from merge.run import MergeConfig

#: Options of each tool the workflow sets itself: a recipe that sets them is refused.
OWNED = {
    "build": ("output_dir", "stage", "push_to_hub"),
    "dpo": ("dataset", "category", "base", "output_dir", "cache_dir", "push_to_hub"),
    "merge": ("experts", "base", "output_dir", "cache_dir", "push_to_hub", "calibration"),
    "evaluation": ("prompts", "base", "loras", "output_dir", "update_card", "cache_dir", "no_base", "attack",
                   "router", "router_experts"),
    "redteam": ("pairs", "category", "base", "output_dir", "cache_dir"),
    "route": ("dataset", "base", "output_dir", "cache_dir", "push_to_hub", "categories"),
}  # fmt: skip
SECTIONS = {"build": BuildConfig, "dpo": DPOConfig, "merge": MergeConfig, "evaluation": EvalConfig,
            "redteam": AttackConfig, "route": RouterConfig}  # fmt: skip
RELEASE_KEYS = ("train_csv", "images", "test_csv")


@dataclass
class WorkflowConfig:
    """Dataset -> an expert per category -> merge -> evaluation -> cards -> (push), under ``output_dir``."""

    output_dir: str = "workflow-out"
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    #: A CoProV2 dataset already built or imported: a folder or a Hub id.
    dataset: str | None = None
    #: Build one: ``python -m coprov2.build`` options (``preset: smoke`` for the tiny one).
    build: dict[str, Any] | None = None
    #: Import the authors' release: ``train_csv``, ``images`` (folder or zip), ``test_csv``.
    release: dict[str, str] | None = None
    #: Categories to train an expert for; ``each`` = every category of the train split.
    categories: list[str] | str = "each"
    dpo: dict[str, Any] = field(default_factory=dict)
    merge: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    #: Red-teaming, off when None: ``python -m evaluation.attack`` options (Ring-A-Bell in the embeddings the base's
    #: denoiser reads, per category, from the dataset's pairs and test prompts), then the ASR of every model.
    redteam: dict[str, Any] | None = None
    #: The concept router, off when None: ``python -m merge.router`` options; trained on the dataset over the experts'
    #: categories, and the routed model (per prompt only the experts it needs) evaluated beside the merge.
    route: dict[str, Any] | None = None
    #: More prompt sets to evaluate on, NAME: CSV or dataset (e.g. ``i2p: i2p_benchmark.csv``).
    extra_prompt_sets: dict[str, str] = field(default_factory=dict)
    #: Hub repo of each expert, ``{category}`` filled in (e.g. ``me/sd15-safety-{category}``); None: no push.
    push_experts: str | None = None
    push_merged: str | None = None
    push_router: str | None = None
    hub_public: bool = False
    dry_run: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        """Every section checked now, so that a typo costs nothing: no step starts before the whole recipe is valid."""
        sources = [name for name in ("dataset", "build", "release") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise UserError(
                f"give exactly one dataset source (dataset, build or release), got {sources or 'none'}"
            )
        if self.release is not None:
            unknown = sorted(set(self.release) - set(RELEASE_KEYS))
            if unknown or "train_csv" not in self.release or "images" not in self.release:
                raise UserError(f"release takes train_csv, images and test_csv, got {sorted(self.release)}")
        if self.categories != "each" and not (
            isinstance(self.categories, list)
            and self.categories
            and all(isinstance(c, str) for c in self.categories)
        ):
            raise UserError(f"categories must be 'each' or a list of names, got {self.categories!r}")
        for name in ("push_experts", "push_merged", "push_router"):
            repo = getattr(self, name)
            if repo is not None and repo.count("/") != 1:
                raise UserError(f"{name} {repo!r} is not a Hub repo id like user/name")
        if self.push_experts and "{category}" not in self.push_experts:
            raise UserError("push_experts must hold {category}, one repo per expert")
        for section, cls in SECTIONS.items():
            values = getattr(self, section) or {}
            if section in ("redteam", "route") and getattr(self, section) is None:
                continue
            check_options(cls, values, section, f"python -m {_module(section)} --help")
            owned = sorted(set(values) & set(OWNED[section]))
            if owned:
                raise UserError(f"{section}.{owned[0]} is set by the workflow; remove it from the recipe")
        checks = {"build": self.build_config, "dpo": lambda: self.dpo_config("violence"),
                  "merge": lambda: self.merge_config([]), "evaluation": lambda: self.eval_config(self.dataset_path, []),
                  "redteam": lambda: self.redteam is None or self.attack_config("violence"),
                  "route": lambda: self.route is None or self.router_config(["hate", "violence"])}  # fmt: skip
        for (
            section,
            check,
        ) in checks.items():  # each tool's own checks (ranges, choices), before anything runs
            try:
                check()
            except UserError as error:
                raise UserError(f"{section}: {error}") from None

    def hub_ids(self) -> list[tuple[str, str, str, str]]:
        """``(option, id, repo type, a file it must have)`` of every model and dataset the recipe's steps open."""
        from coprov2.build import hub_models
        from evaluation.run import scorer_models

        evaluation = self.eval_config(self.dataset_path, [])
        ids = [("base", self.base, "model", "model_index.json")]
        if self.dataset is not None:
            ids.append(("dataset", self.dataset, "dataset", "README.md"))
        build = self.build_config()
        if build is not None:
            ids += [
                (f"build.{option}", name, "model", filename) for option, name, filename in hub_models(build)
            ]
        ids += [
            (f"evaluation.{option}", name, "model", "config.json")
            for option, name in scorer_models(evaluation)
        ]
        return ids

    def check_models(self) -> None:
        """Before the first step: every model and dataset the recipe opens can be opened (one line naming the key,
        the id and the likely fix otherwise), and what the base's family decides is checked on its configs (no
        weights), one line per bad option: LoRA targets it has no module for (a UNet's ``attn2`` on a
        transformer), the other family's options, sizes its VAE and denoiser cannot make (training, calibration,
        evaluation, rendering). A tiny base is written to a scratch folder for this, so a refused recipe leaves
        nothing in ``output_dir``."""
        from coprov2.build import check_render_size
        from coprov2.paths import check_hub_access
        from coprov2.tiny import resolve_tiny_model
        from dpo.families import check_sizes
        from dpo.trainer import resolve_for_base

        for option, name, repo_type, filename in self.hub_ids():
            check_hub_access(name, option, repo_type=repo_type, filename=filename)
        with tempfile.TemporaryDirectory() as scratch:
            base = resolve_tiny_model(self.base, Path(scratch))
            checks = {
                "dpo": lambda: resolve_for_base(self.dpo_config("violence"), base),
                "merge": lambda: check_sizes(
                    base, None, {"--resolution": self.merge.get("resolution")}, name=self.base
                ),
                "evaluation": lambda: check_sizes(
                    base,
                    None,
                    {"--height": self.evaluation.get("height"), "--width": self.evaluation.get("width")},
                    name=self.base,
                ),
                "build": lambda: (
                    self.build is None
                    or check_render_size(dataclasses.replace(self.build_config(), output_dir=scratch))
                ),
            }
            for section, check in checks.items():
                try:
                    check()
                except UserError as error:
                    raise UserError(f"{section}: {error}") from None

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    @property
    def cache_dir(self) -> str:
        """One cache for every tool: tiny models are written once, encoded latents are shared."""
        return str(self.root / "cache")

    def build_config(self) -> BuildConfig | None:
        if self.build is None:
            return None
        preset = self.build.get("preset")
        if preset is not None and preset not in PRESETS:
            raise UserError(f"build.preset {preset!r} is unknown; choose from {', '.join(PRESETS)}")
        values = {**PRESETS.get(preset, {}), **self.build}
        return BuildConfig(**{**values, "output_dir": str(self.root / "coprov2"), "stage": "dataset",
                              "progress": self.progress})  # fmt: skip

    def dpo_config(self, category: str) -> DPOConfig:
        return DPOConfig(**{**self.dpo, "dataset": self.dataset_path, "category": category, "base": self.base,
                            "output_dir": str(self.root / "experts" / category), "cache_dir": self.cache_dir,
                            "progress": self.progress})  # fmt: skip

    def merge_config(self, experts: list[str]) -> MergeConfig:
        return MergeConfig(**{**self.merge, "experts": experts, "base": self.base, "calibration": self.dataset_path,
                              "output_dir": str(self.root / "merged"), "cache_dir": self.cache_dir,
                              "progress": self.progress})  # fmt: skip

    def router_config(self, categories: list[str]) -> RouterConfig:
        return RouterConfig(**{**(self.route or {}), "dataset": self.dataset_path, "base": self.base,
                               "categories": categories, "output_dir": str(self.root / "router"),
                               "cache_dir": self.cache_dir, "progress": self.progress})  # fmt: skip

    def eval_config(
        self,
        prompts: str,
        loras: list[str],
        name: str = "test",
        cards: bool = True,
        router: str | None = None,
    ) -> EvalConfig:
        return EvalConfig(**{**self.evaluation, "prompts": prompts, "base": self.base, "loras": loras, "router": router,
                             "output_dir": str(self.root / f"eval-{name}"), "cache_dir": self.cache_dir,
                             "update_card": [*(spec.partition("=")[2] for spec in loras), *([router] if router else [])]
                             if cards else [],
                             "progress": self.progress})  # fmt: skip

    def attack_config(self, category: str) -> AttackConfig:
        return AttackConfig(**{**(self.redteam or {}), "pairs": self.dataset_path, "category": category,
                               "base": self.base, "output_dir": str(self.root / "redteam" / category),
                               "cache_dir": self.cache_dir, "progress": self.progress})  # fmt: skip

    @property
    def dataset_path(self) -> str:
        """Where the dataset is (or will be): the given one, the build's export or the imported release."""
        if self.dataset is not None:
            return self.dataset
        return str(self.root / ("coprov2/dataset" if self.build is not None else "dataset"))


def _module(section: str) -> str:
    return {
        "build": "coprov2.build",
        "dpo": "dpo.train",
        "redteam": "evaluation.attack",
        "route": "merge.router",
    }.get(section, section)


def load_recipe(path: str | Path, **overrides: Any) -> WorkflowConfig:
    """The recipe at ``path`` (unknown keys and wrong types refused, naming the key), ``overrides`` on top."""
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping, got a {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(WorkflowConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"{path}: unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    for name in ("build", "release", "dpo", "merge", "evaluation", "redteam", "route", "extra_prompt_sets"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise UserError(f"{path}: {name} must be a mapping of option: value, got {data[name]!r}")
    data.update(overrides)
    try:
        return WorkflowConfig(**data)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
