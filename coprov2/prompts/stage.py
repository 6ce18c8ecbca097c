"""Stage ``prompts``: validated (unsafe, safe twin) pairs for every concept, sharded and resumable.

Concepts are split into ``num_shards`` shards by the hash of their id; a shard is one LLM batch
(with its retries). Since every request seed derives from the run seed and names, a shard comes out
the same whichever run writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from transformers import AutoTokenizer

from coprov2.executor import Stage
from coprov2.expand import read_stage_taxonomy
from coprov2.llm import LLMBackend
from coprov2.llm.config import LLM_OUTPUT_NEUTRAL
from coprov2.prompts.config import PromptsConfig
from coprov2.prompts.generate import generate_pairs
from coprov2.prompts.templates import load_template
from coprov2.prompts.validate import PromptChecker
from coprov2.sharding import split_into_shards
from coprov2.stage_io import ShardWriter

PAIRS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("concept", pa.string()),
        ("unsafe_prompt", pa.string()),
        ("safe_prompt", pa.string()),
        ("unsafe_request_seed", pa.int64()),
        ("safe_request_seed", pa.int64()),
    ]
)


def clip_token_counter(t2i_model: str) -> Callable[[str], int]:
    """Token count (with start/end tokens) under the T2I pipeline's own tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(t2i_model, subfolder="tokenizer")
    return lambda text: len(tokenizer(text, truncation=False, verbose=False).input_ids)


class PromptsStage(Stage):
    """Writes ``prompts/`` shards: per concept ``prompts_per_concept`` validated pairs."""

    name = "prompts"
    schema = PAIRS_SCHEMA
    #: templates are fingerprinted by content (inputs), so their folder's path is not part of it.
    OUTPUT_NEUTRAL = frozenset({"templates_dir"} | {f"llm.{n}" for n in LLM_OUTPUT_NEUTRAL})

    def __init__(
        self,
        config: PromptsConfig,
        backend: Callable[[], LLMBackend],
        resolve_model: Callable[[str], str] = str,
    ) -> None:
        super().__init__(config)
        self.backend = backend
        self.resolve_model = resolve_model
        self.templates = {
            name: load_template(name, config.templates_dir) for name in ("unsafe_prompts", "safe_twin")
        }

    def num_shards(self, root: Path) -> int:
        return self.config.num_shards

    def inputs(self, root: Path) -> dict[str, Any]:
        return {
            "taxonomy": read_stage_taxonomy(root).fingerprint(),
            "templates": {name: t.fingerprint() for name, t in self.templates.items()},
        }

    @functools.cache  # noqa: B019 - one checker per stage object, which lives for one build
    def checker(self) -> PromptChecker:
        counter = clip_token_counter(self.resolve_model(self.config.t2i_model))
        return PromptChecker(counter, self.config.max_prompt_tokens)

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        if writer.committed:  # one LLM batch per shard: one part
            return
        taxonomy = read_stage_taxonomy(root)
        shard = split_into_shards(taxonomy.concepts(), key=lambda c: c.id, num_shards=self.config.num_shards)
        result = generate_pairs(
            shard[index],
            taxonomy,
            self.backend(),
            self.checker(),
            self.templates,
            self.config,
            self.config.llm.sampling(),
            self.config.seed,
        )
        writer.commit_result(result)

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        taxonomy = read_stage_taxonomy(root)
        return {
            "llm_model": self.config.llm.model,
            "taxonomy_concepts": {c.id: len(c.concepts) for c in taxonomy.categories},
        }
