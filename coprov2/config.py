"""The builder's config: the flat CLI options, composed into each stage's own config, and the parser.

Each stage is built from its own dataclass (``coprov2/<stage>/config.py``, leaf modules). The CLI
keeps one flat namespace of flags (``--t2i_steps``, ``--gate_min_score``, ...): :data:`FEEDS` says
which stage config field(s) each flag sets, and :meth:`BuildConfig.stage_config` builds a stage's
config from them, refusing to leave any of its fields unset (a flag cannot be forgotten).

Precedence: class defaults < ``--preset`` < ``--config FILE.yaml`` < command-line flags.
Model fields accept ``tiny:<kind>`` (``tiny:lm``, ``tiny:sd15``, ...): the tiny random models of
:mod:`coprov2.tiny`, written into ``<output_dir>/tiny-models`` on first use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from datasets.utils.py_utils import convert_file_size_to_int

from coprov2.cli import DataclassArgumentParser
from coprov2.dataset.config import DatasetConfig
from coprov2.errors import UserError, check_ranges, load_yaml_file
from coprov2.gate.config import GateConfig
from coprov2.images.config import IMAGE_FORMATS, ImagesConfig
from coprov2.llm.config import BACKENDS, LLMConfig
from coprov2.prompts.config import PromptsConfig
from coprov2.taxonomy_config import TaxonomyConfig
from coprov2.tiny import resolve_tiny_model

STAGES = ("taxonomy", "prompts", "images", "gate", "dataset")

#: The config class of each section (a stage, or the LLM shared by taxonomy and prompts).
SECTIONS: dict[str, type] = {
    "taxonomy": TaxonomyConfig,
    "prompts": PromptsConfig,
    "images": ImagesConfig,
    "gate": GateConfig,
    "dataset": DatasetConfig,
    "llm": LLMConfig,
}

#: Flat option -> the ``section.field`` it sets; the first one gives its default and help.
FEEDS: dict[str, tuple[str, ...]] = {
    "concepts": ("taxonomy.concepts",),
    "limit_concepts": ("taxonomy.limit_concepts",),
    "expand_to": ("taxonomy.expand_to",),
    "expand_batch": ("taxonomy.expand_batch",),
    "seed": ("taxonomy.seed", "prompts.seed", "images.seed", "dataset.seed"),
    "templates_dir": ("taxonomy.templates_dir", "prompts.templates_dir"),
    "max_retries": ("taxonomy.max_retries", "prompts.max_retries"),
    "prompts_per_concept": ("prompts.prompts_per_concept",),
    "max_prompt_chars": ("prompts.max_prompt_chars",),
    "max_prompt_tokens": ("prompts.max_prompt_tokens",),
    "num_shards": ("prompts.num_shards",),
    "t2i_model": ("prompts.t2i_model", "images.model"),
    **{
        f"llm_{f.name}": (f"llm.{f.name}",)
        for f in dataclasses.fields(LLMConfig)  # every LLM option is a --llm_<name> flag
    },
    **{
        f"t2i_{name}": (f"images.{name}",)
        for name in (
            "dtype",
            "steps",
            "guidance",
            "height",
            "width",
            "negative_prompt",
            "batch_pairs",
            "shard_pairs",
            "compile",
        )
    },
    "image_format": ("images.image_format",),
    "clip_model": ("gate.clip_model",),
    "clip_batch_size": ("gate.batch_size",),
    "gate_min_score": ("gate.min_score",),
    "gate_percentile": ("gate.percentile",),
    "gate_require_own_closer": ("gate.require_own_closer",),
    "gate_image_embeddings": ("gate.image_embeddings",),
    "test_ratio": ("dataset.test_ratio",),
    "dataset_license": ("dataset.license",),
    "max_shard_size": ("dataset.max_shard_size",),
    "release_layout": ("dataset.release_layout",),
    "push_to_hub": ("dataset.push_to_hub",),
    "hub_gated": ("dataset.hub_gated",),
    "hub_public": ("dataset.hub_public",),
    "dry_run": ("dataset.dry_run",),
}


def _option(name: str) -> Any:
    """A BuildConfig field with the default, help and choices of the stage field it feeds first."""
    section, target = FEEDS[name][0].split(".")
    source = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[target]
    default = source.default if source.default is not MISSING else source.default_factory()
    metadata = dict(source.metadata) or {"help": f"see {SECTIONS[section].__name__}.{target}"}
    return field(default=default, metadata=metadata)


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
        "t2i_shard_pairs": 16,
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


#: Numeric options: (lowest, highest, lowest excluded). NaN and infinities are refused for all of them.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "limit_concepts": (1, None, False),
    "expand_to": (0, None, False),
    "expand_batch": (1, None, False),
    "seed": (0, 2**63 - 1, False),
    "max_retries": (0, None, False),
    "prompts_per_concept": (1, None, False),
    "max_prompt_chars": (1, None, False),
    "max_prompt_tokens": (1, None, False),
    "num_shards": (1, None, False),
    "llm_tensor_parallel_size": (1, None, False),
    "llm_max_model_len": (1, None, False),
    "llm_gpu_memory_utilization": (0, 1, True),
    "llm_temperature": (0, None, False),
    "llm_top_p": (0, 1, True),
    "llm_max_tokens": (1, None, False),
    "llm_concurrency": (1, None, False),
    "llm_timeout_s": (0, None, True),
    "llm_max_attempts": (1, None, False),
    "llm_retry_backoff_s": (0, None, False),
    "t2i_steps": (1, None, False),
    "t2i_guidance": (0, None, False),
    "t2i_height": (8, None, False),
    "t2i_width": (8, None, False),
    "t2i_batch_pairs": (1, None, False),
    "t2i_shard_pairs": (1, None, False),
    "clip_batch_size": (1, None, False),
    "gate_min_score": (-1, 1, False),
    "gate_percentile": (0, 100, False),
    "test_ratio": (0, 0.99, False),
}

#: Options with a fixed set of values (argparse checks flags; these checks also cover YAML and Python).
CHOICES: dict[str, tuple[str, ...]] = {
    "stage": STAGES,
    "log_level": ("debug", "info", "warning"),
    "llm_backend": BACKENDS,
    "llm_dtype": ("auto", "bfloat16", "float16", "float32"),
    "t2i_dtype": ("auto", "bfloat16", "float16", "float32"),
    "image_format": IMAGE_FORMATS,
    "hub_gated": ("manual", "auto"),
}


@dataclass
class BuildConfig:
    """Everything ``python -m coprov2.build`` does, as one value; ``coprov2.build.build(config)`` runs it."""

    output_dir: str = field(default="coprov2-out", metadata={"help": "where stage folders are written"})
    stage: str = field(
        default="prompts",
        metadata={"help": "last stage to run; finished earlier ones are skipped", "choices": STAGES},
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "named defaults: 'smoke' (tiny models, offline)", "choices": sorted(PRESETS)},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    wait_for_lock: bool = field(
        default=False,
        metadata={
            "help": "when another run is writing the same --output_dir: wait for it (default: stop, exit 2)"
        },
    )
    log_level: str = field(
        default="info",
        metadata={
            "help": "logging level (debug logs every committed render batch)",
            "choices": ("debug", "info", "warning"),
        },
    )
    concepts: str = _option("concepts")
    limit_concepts: int | None = _option("limit_concepts")
    expand_to: int = _option("expand_to")
    expand_batch: int = _option("expand_batch")
    seed: int = _option("seed")
    templates_dir: str | None = _option("templates_dir")
    max_retries: int = _option("max_retries")
    prompts_per_concept: int = _option("prompts_per_concept")
    max_prompt_chars: int = _option("max_prompt_chars")
    max_prompt_tokens: int = _option("max_prompt_tokens")
    num_shards: int = _option("num_shards")
    t2i_model: str = _option("t2i_model")
    llm_backend: str = _option("llm_backend")
    llm_model: str = _option("llm_model")
    llm_base_url: str | None = _option("llm_base_url")
    llm_api_key_env: str = _option("llm_api_key_env")
    llm_dtype: str = _option("llm_dtype")
    llm_tensor_parallel_size: int = _option("llm_tensor_parallel_size")
    llm_max_model_len: int = _option("llm_max_model_len")
    llm_gpu_memory_utilization: float = _option("llm_gpu_memory_utilization")
    llm_enforce_eager: bool = _option("llm_enforce_eager")
    llm_temperature: float = _option("llm_temperature")
    llm_top_p: float = _option("llm_top_p")
    llm_max_tokens: int = _option("llm_max_tokens")
    llm_concurrency: int = _option("llm_concurrency")
    llm_timeout_s: float = _option("llm_timeout_s")
    llm_max_attempts: int = _option("llm_max_attempts")
    llm_retry_backoff_s: float = _option("llm_retry_backoff_s")
    t2i_dtype: str = _option("t2i_dtype")
    t2i_steps: int = _option("t2i_steps")
    t2i_guidance: float = _option("t2i_guidance")
    t2i_height: int | None = _option("t2i_height")
    t2i_width: int | None = _option("t2i_width")
    t2i_negative_prompt: str | None = _option("t2i_negative_prompt")
    t2i_batch_pairs: int = _option("t2i_batch_pairs")
    t2i_shard_pairs: int = _option("t2i_shard_pairs")
    t2i_compile: bool = _option("t2i_compile")
    image_format: str = _option("image_format")
    clip_model: str = _option("clip_model")
    clip_batch_size: int = _option("clip_batch_size")
    gate_min_score: float = _option("gate_min_score")
    gate_percentile: float = _option("gate_percentile")
    gate_require_own_closer: bool = _option("gate_require_own_closer")
    gate_image_embeddings: str | None = _option("gate_image_embeddings")
    test_ratio: float = _option("test_ratio")
    dataset_license: str = _option("dataset_license")
    max_shard_size: str = _option("max_shard_size")
    release_layout: bool = _option("release_layout")
    push_to_hub: str | None = _option("push_to_hub")
    hub_gated: str = _option("hub_gated")
    hub_public: bool = _option("hub_public")
    dry_run: bool = _option("dry_run")

    def __post_init__(self) -> None:
        """Every option checked once, here, before any work: numbers finite and in range, names known."""
        check_ranges(self, RANGES)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise UserError(
                    f"--{name} {getattr(self, name)!r} is unknown; choose from {', '.join(choices)}"
                )
        try:
            convert_file_size_to_int(self.max_shard_size)
        except (ValueError, TypeError):
            raise UserError(
                f"--max_shard_size {self.max_shard_size!r} is not a size like 500MB or 2GB"
            ) from None

    def stage_config(self, section: str) -> Any:
        """The config of ``section`` (a stage or ``llm``), every field set from the flat options."""
        cls = SECTIONS[section]
        values: dict[str, Any] = {}
        for option, targets in FEEDS.items():
            for target in targets:
                target_section, name = target.split(".")
                if target_section == section:
                    values[name] = getattr(self, option)
        if any(f.name == "llm" for f in dataclasses.fields(cls)):
            values["llm"] = self.stage_config("llm")
        missing = {f.name for f in dataclasses.fields(cls)} - set(values)
        if missing:  # a bug, not a user error: a stage field that no option sets
            raise AssertionError(f"no option feeds {cls.__name__}.{', '.join(sorted(missing))}")
        return cls(**values)

    @property
    def models_dir(self) -> Path:
        return Path(self.output_dir) / "tiny-models"

    def resolve_model(self, name: str) -> str:
        """A model id or folder; ``tiny:<kind>`` becomes a tiny model folder, written if missing."""
        return resolve_tiny_model(name, self.models_dir)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file: a mapping of known options, each value of its option's type."""
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a config file must be a mapping of option: value, got a {type(data).__name__}"
        )
    check_options(BuildConfig, data, str(path), "python -m coprov2.build --help")
    return data


def check_options(cls: type, data: dict[str, Any], where: str, help_command: str) -> None:
    """``data`` (from a YAML file) holds only options of dataclass ``cls``, each of its declared type."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"{where}: unknown option(s) {', '.join(unknown)}; see `{help_command}`")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        hint = hints[name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        declared = typing.get_args(hint) if union else (hint,)
        allowed = tuple(
            t for d in declared for t in ((int, float) if d is float else (typing.get_origin(d) or d,))
        )
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            expected = " or ".join(
                "None" if d is type(None) else getattr(d, "__name__", str(d)) for d in declared
            )
            raise UserError(f"{where}: option {name} must be {expected}, got {value!r}")


def make_parser() -> DataclassArgumentParser:
    parser = DataclassArgumentParser(
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
    """Flags over ``--config`` over ``--preset`` over class defaults. The first parse checks every flag (and
    finds the preset and the file); the second reads the flags again over the defaults those two give."""
    parser = make_parser()
    flags, given = parser.parse_args_into_dataclasses(argv)
    defaults: dict[str, Any] = {}
    if flags.preset:
        defaults.update(PRESETS[flags.preset])
    if given.config:
        defaults.update(load_yaml_config(given.config))
    parser.set_defaults(**defaults)
    config, _ = parser.parse_args_into_dataclasses(argv)
    return config
