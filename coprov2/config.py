"""The builder's config: one dataclass (the option groups of each step, inherited) and its CLI parser.

Precedence: class defaults < ``--preset`` < ``--config FILE.yaml`` < command-line flags.
Model fields accept ``tiny:<kind>`` (``tiny:lm``, ``tiny:sd15``, ...): the tiny random models of
:mod:`coprov2.tiny`, written into ``<output_dir>/tiny-models`` on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from coprov2.dataset.export import DatasetConfig
from coprov2.expand import ExpandConfig
from coprov2.gate.decide import GateConfig
from coprov2.images.render import RenderConfig
from coprov2.llm import LLMConfig
from coprov2.prompts.generate import PromptsConfig
from coprov2.tiny import resolve_tiny_model

STAGES = ("taxonomy", "prompts", "images", "gate", "dataset")

#: Every stage on tiny random models, offline, in a few minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "output_dir": "coprov2-smoke",
        "llm_backend": "vllm",
        "llm_model": "tiny:lm",
        "llm_dtype": "float32",
        "llm_enforce_eager": True,
        "llm_gpu_memory_utilization": 0.2,
        "llm_max_model_len": 2048,
        "llm_max_tokens": 512,
        "t2i_model": "tiny:sd15",
        "limit_concepts": 2,
        "expand_to": 3,
        "expand_batch": 2,
        "prompts_per_concept": 2,
        "max_prompt_chars": 40,
        "max_retries": 1,
        "num_shards": 2,
        "t2i_steps": 2,
        "t2i_batch_pairs": 4,
        "clip_model": "tiny:clip",
        # A random UNet barely follows prompts, so both images of a pair look alike and the relative rule
        # (each image closer to its own prompt) could never hold; a random CLIP scores around 0. The smoke
        # gate drops the run's lowest quarter of own-prompt scores instead.
        "gate_min_score": -1.0,
        "gate_percentile": 25.0,
        "gate_require_own_closer": False,
        "stage": "dataset",
        "test_ratio": 0.34,
    }
}


@dataclass
class BuildConfig(DatasetConfig, GateConfig, RenderConfig, LLMConfig, PromptsConfig, ExpandConfig):
    """Everything ``python -m coprov2.build`` does, as one value; ``coprov2.build.build(config)`` runs it."""

    output_dir: str = field(default="coprov2-out", metadata={"help": "where stage folders are written"})
    concepts: str = field(
        default="default",
        metadata={"help": "taxonomy YAML file ('default': the shipped 7-category taxonomy)"},
    )
    limit_concepts: int | None = field(
        default=None, metadata={"help": "use only the first N concepts of each category (quick runs)"}
    )
    seed: int = field(default=0, metadata={"help": "run seed; every request and image seed derives from it"})
    num_shards: int = field(
        default=8, metadata={"help": "work split by concept hash; each process takes a share"}
    )
    stage: str = field(
        default="prompts",
        metadata={"help": "last stage to run; finished earlier ones are skipped", "choices": STAGES},
    )
    t2i_model: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "text-to-image model id or folder (its tokenizer bounds prompt length)"},
    )
    preset: str | None = field(
        default=None, metadata={"help": "named defaults: 'smoke' (tiny models, offline)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is unknown; choose from {', '.join(STAGES)}")
        for name in (
            "num_shards",
            "prompts_per_concept",
            "max_prompt_chars",
            "max_prompt_tokens",
            "t2i_batch_pairs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def models_dir(self) -> Path:
        return Path(self.output_dir) / "tiny-models"

    def resolve_model(self, name: str) -> str:
        """A model id or folder; ``tiny:<kind>`` becomes a tiny model folder, written if missing."""
        return resolve_tiny_model(name, self.models_dir)


FIELDS = {f.name for f in dataclasses.fields(BuildConfig)}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of option: value")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {', '.join(unknown)}; see `python -m coprov2.build --help`"
        )
    return data


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        BuildConfig,
        prog="python -m coprov2.build",
        description=(
            "Build CoProV2: taxonomy -> (LLM expansion) -> unsafe prompts and safe twins -> same-seed image "
            "pairs -> CLIP gate -> Hugging Face dataset (<output_dir>/dataset). Every stage writes "
            "atomic shards under --output_dir and a rerun of the same command resumes where it stopped. "
            "Example: python -m coprov2.build --preset smoke"
        ),
    )
    parser.add_argument(
        "--config", default=None, help="YAML file of options (keys as below); flags override it"
    )
    return parser


def parse_build_args(argv: list[str] | None = None) -> BuildConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--preset", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if known.preset:
        defaults.update(PRESETS[known.preset])
    if known.config:
        defaults.update(load_yaml_config(known.config))
    parser = make_parser()
    parser.set_defaults(**defaults)
    config, _extra = parser.parse_args_into_dataclasses(argv)
    return config
