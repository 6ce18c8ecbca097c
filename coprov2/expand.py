"""Taxonomy expansion: the LLM proposes more concepts per category until each reaches a target.

Rounds of one batched request per short category; answers are normalized (NFKC, lowercase, single
spaces), checked like hand-written concepts (:func:`coprov2.taxonomy.concept_problem`) and deduplicated
across *all* categories. A category that gains nothing ``max_stalls`` rounds in a row is left short
(and counted). The seven shipped categories at ``--expand_to 104`` give about the paper's 723 concepts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coprov2.executor import run_sharded
from coprov2.llm import LLMBackend, LLMRequest
from coprov2.prompts.schemas import concepts_schema
from coprov2.prompts.templates import ChatTemplate, load_template
from coprov2.prompts.validate import AnswerRejected, Reason, clean_text, parse_answer
from coprov2.seeds import derive_seed
from coprov2.stage_io import ShardResult, StageDir, atomic_write_text
from coprov2.taxonomy import (
    MAX_CONCEPT_CHARS,
    Category,
    Taxonomy,
    concept_problem,
    load_taxonomy,
    normalize_concept,
)

if TYPE_CHECKING:
    from coprov2.config import BuildConfig


@dataclass
class ExpandConfig:
    """Optional LLM expansion of the taxonomy before prompts are written."""

    expand_to: int = field(
        default=0,
        metadata={"help": "grow each category to this many concepts with the LLM (0: off; 104 ~ 723 total)"},
    )
    expand_batch: int = field(default=25, metadata={"help": "concepts asked for per request"})


def expand_taxonomy(
    taxonomy: Taxonomy,
    backend: LLMBackend,
    template: ChatTemplate,
    target: int,
    batch: int,
    max_stalls: int,
    sampling: Mapping[str, Any],
    seed: int,
) -> tuple[Taxonomy, ShardResult]:
    """The grown taxonomy, and the added concepts / rejections / stats as a one-shard stage result."""
    concepts = {c.id: list(c.concepts) for c in taxonomy.categories}
    known = {name for names in concepts.values() for name in names}
    stalls: Counter[str] = Counter()
    added: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    round_index = requests_sent = 0
    while True:
        short = [c for c in taxonomy.categories if len(concepts[c.id]) < target and stalls[c.id] < max_stalls]
        if not short:
            break
        requests = []
        for category in short:
            n = min(batch, target - len(concepts[category.id]))
            messages = template.render(
                n=n,
                category_name=category.name,
                category_description=category.description,
                existing="; ".join(concepts[category.id]),
            )
            seed_i = derive_seed(seed, "expand", category.id, round_index)
            requests.append(LLMRequest(messages, seed_i, concepts_schema(n, MAX_CONCEPT_CHARS), **sampling))
        requests_sent += len(requests)
        for category, request, answer in zip(short, requests, backend.generate(requests), strict=True):
            n = request.schema["properties"]["concepts"]["minItems"]
            base = {"step": "expand", "category": category.id, "round": round_index, "seed": request.seed}
            try:
                items = parse_answer(answer.text, "concepts", n)
            except AnswerRejected as error:
                rejected.append(
                    {**base, "reason": error.reason.value, "detail": error.detail, "text": answer.text[:1000]}
                )
                stalls[category.id] += 1
                continue
            gained = 0
            for item in items:
                concept = normalize_concept(clean_text(item))
                problem = concept_problem(concept)
                reason = Reason.INVALID_CONCEPT if problem else Reason.DUPLICATE if concept in known else None
                if reason is not None:
                    rejected.append({**base, "reason": reason.value, "detail": problem or "", "text": item})
                    continue
                known.add(concept)
                concepts[category.id].append(concept)
                added.append({**base, "concept": concept})
                gained += 1
            stalls[category.id] = 0 if gained else stalls[category.id] + 1
        round_index += 1
    grown = with_added_concepts(taxonomy, added)
    stats = {
        "concepts_added": dict(sorted(Counter(a["category"] for a in added).items())),
        "categories_short_of_target": {c.id: 1 for c in grown.categories if len(c.concepts) < target},
        "rejected": dict(sorted(Counter(f"expand/{r['reason']}" for r in rejected).items())),
        "requests": {"expand": requests_sent},
    }
    return grown, ShardResult(added, rejected, stats)


def run_taxonomy_stage(config: BuildConfig, backend: Callable[[], LLMBackend]) -> Taxonomy:
    """Stage ``taxonomy``: load (and limit) the taxonomy, expand it if asked, record it under ``taxonomy/``.

    A one-shard stage (so the main process does it); its records are the added concepts, from which
    every process derives the same taxonomy. ``backend`` is called only when an expansion actually
    has to run (a finished stage needs no LLM).
    """
    base = load_taxonomy(config.concepts).limited(config.limit_concepts)
    stage = StageDir(Path(config.output_dir), "taxonomy", num_shards=1)
    stage_config: dict[str, Any] = {
        "taxonomy": base.fingerprint(),
        "expand_to": config.expand_to,
        "seed": config.seed,
    }
    template = load_template("expand_concepts", config.templates_dir)
    if config.expand_to:
        stage_config.update(
            expand_batch=config.expand_batch,
            max_retries=config.max_retries,
            llm=config.identity(),
            template=template.fingerprint(),
        )

    def step(index: int) -> tuple[ShardResult, dict[str, bytes]]:
        if not config.expand_to:
            return ShardResult([], [], {}), {}
        _, result = expand_taxonomy(
            base,
            backend(),
            template,
            target=config.expand_to,
            batch=config.expand_batch,
            max_stalls=config.max_retries + 1,
            sampling=config.sampling(),
            seed=config.seed,
        )
        return result, {}

    def summarize() -> dict[str, Any]:
        # the resolved taxonomy, for people; the stages themselves derive it from the records
        atomic_write_text(
            stage.dir / "taxonomy.yaml", with_added_concepts(base, stage.read_shard(0)).to_yaml()
        )
        return {}

    run_sharded(stage, stage_config, step, {}, config.progress, summarize)
    return with_added_concepts(base, stage.read_shard(0))


def with_added_concepts(taxonomy: Taxonomy, added: list[dict[str, Any]]) -> Taxonomy:
    """``taxonomy`` with the expansion's added concept records appended, in order."""
    extra: dict[str, list[str]] = {}
    for record in added:
        extra.setdefault(record["category"], []).append(record["concept"])
    return Taxonomy(
        tuple(
            Category(c.id, c.name, c.description, c.concepts + tuple(extra.get(c.id, ())))
            for c in taxonomy.categories
        ),
        taxonomy.source,
    )
