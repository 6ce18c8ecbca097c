"""Config of stage ``taxonomy`` (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coprov2.llm.config import LLMConfig


@dataclass
class TaxonomyConfig:
    """The concept taxonomy and its optional LLM expansion."""

    concepts: str = field(
        default="default",
        metadata={"help": "taxonomy YAML file ('default': the shipped 7-category taxonomy)"},
    )
    limit_concepts: int | None = field(
        default=None, metadata={"help": "use only the first N concepts of each category (quick runs)"}
    )
    expand_to: int = field(
        default=0,
        metadata={"help": "grow each category to this many concepts with the LLM (0: off; 104 ~ 723 total)"},
    )
    expand_batch: int = field(default=25, metadata={"help": "concepts asked for per request"})
    max_retries: int = field(
        default=3, metadata={"help": "extra attempts, with new seeds, for what was rejected"}
    )
    templates_dir: str | None = field(
        default=None,
        metadata={"help": "folder with prompt templates (*.yaml) overriding the shipped ones"},
    )
    seed: int = field(default=0, metadata={"help": "run seed; every request and image seed derives from it"})
    llm: LLMConfig = field(default_factory=LLMConfig)
