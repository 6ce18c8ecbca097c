"""Config of stage ``prompts`` (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coprov2.llm.config import LLMConfig


@dataclass
class PromptsConfig:
    """How many prompts per concept, the rules they must pass, and the LLM that writes them."""

    prompts_per_concept: int = field(default=32, metadata={"help": "unsafe prompts (and twins) per concept"})
    max_retries: int = field(
        default=3, metadata={"help": "extra attempts, with new seeds, for what was rejected"}
    )
    max_prompt_chars: int = field(
        default=300, metadata={"help": "length bound given to the LLM and its schema"}
    )
    max_prompt_tokens: int = field(
        default=77, metadata={"help": "token limit of the T2I text encoder (CLIP: 77)"}
    )
    templates_dir: str | None = None
    num_shards: int = field(
        default=64,
        metadata={
            "help": "prompts work split by concept hash (one LLM batch per shard); use at least the number "
            "of processes"
        },
    )
    t2i_model: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "text-to-image model id or folder (its tokenizer bounds prompt length)"},
    )
    seed: int = 0
    llm: LLMConfig = field(default_factory=LLMConfig)
