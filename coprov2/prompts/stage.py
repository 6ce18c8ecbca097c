"""Stage ``prompts``: validated (unsafe, safe twin) pairs for every concept, sharded and resumable.

Concepts are split into ``num_shards`` shards by the hash of their id (later stages keep that split:
their shard ``i`` holds the pairs of prompts shard ``i``). Since every request seed derives from the
run seed and names, a shard comes out the same whichever run writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer

from coprov2.executor import run_sharded
from coprov2.llm import LLMBackend
from coprov2.prompts.generate import generate_pairs
from coprov2.prompts.templates import load_template
from coprov2.prompts.validate import PromptChecker
from coprov2.sharding import split_into_shards
from coprov2.stage_io import StageDir
from coprov2.taxonomy import Taxonomy

if TYPE_CHECKING:
    from coprov2.config import BuildConfig


def clip_token_counter(t2i_model: str) -> Callable[[str], int]:
    """Token count (with start/end tokens) under the T2I pipeline's own tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(t2i_model, subfolder="tokenizer")
    return lambda text: len(tokenizer(text, truncation=False, verbose=False).input_ids)


def prompts_stage_dir(config: BuildConfig) -> StageDir:
    return StageDir(Path(config.output_dir), "prompts", config.num_shards)


def run_prompts_stage(
    config: BuildConfig, taxonomy: Taxonomy, backend: Callable[[], LLMBackend]
) -> dict[str, Any]:
    """Write ``prompts/`` shards for this process's share, then (main process) the manifest."""
    templates = {name: load_template(name, config.templates_dir) for name in ("unsafe_prompts", "safe_twin")}
    stage_config = {
        "taxonomy": taxonomy.fingerprint(),
        "seed": config.seed,
        "num_shards": config.num_shards,
        "llm": config.identity(),
        "t2i_model": config.t2i_model,
        "templates": {name: t.fingerprint() for name, t in templates.items()},
        "prompts_per_concept": config.prompts_per_concept,
        "max_retries": config.max_retries,
        "max_prompt_chars": config.max_prompt_chars,
        "max_prompt_tokens": config.max_prompt_tokens,
    }
    shards = split_into_shards(
        taxonomy.concepts(), key=lambda concept: concept.id, num_shards=config.num_shards
    )

    @functools.cache
    def checker() -> PromptChecker:
        counter = clip_token_counter(config.resolve_model(config.t2i_model))
        return PromptChecker(counter, config.max_prompt_tokens)

    def step(index: int):
        result = generate_pairs(
            shards[index], taxonomy, backend(), checker(), templates, config, config.sampling(), config.seed
        )
        return result, {}

    extra = {
        "llm_model": config.llm_model,
        "taxonomy_concepts": {c.id: len(c.concepts) for c in taxonomy.categories},
    }
    return run_sharded(prompts_stage_dir(config), stage_config, step, extra, config.progress)
