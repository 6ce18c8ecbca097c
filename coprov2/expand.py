"""Taxonomy expansion: the LLM proposes more concepts per category until each reaches a target.

Rounds of one batched request per short category; answers are normalized (NFKC, lowercase, single
spaces), checked like hand-written concepts (:func:`coprov2.taxonomy.concept_problem`) and deduplicated
across *all* categories. A category that gains nothing ``max_stalls`` rounds in a row is left short
(and counted). The seven shipped categories at ``--expand_to 104`` give about the paper's 723 concepts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from coprov2.errors import UserError
from coprov2.executor import Stage
from coprov2.llm import LLMBackend, LLMRequest
from coprov2.llm.config import LLM_OUTPUT_NEUTRAL
from coprov2.prompts.schemas import concepts_schema
from coprov2.prompts.templates import ChatTemplate, load_template
from coprov2.prompts.validate import AnswerRejected, Reason, clean_text, parse_answer
from coprov2.seeds import derive_seed
from coprov2.stage_io import ShardResult, ShardWriter, StageDir, atomic_write_text
from coprov2.taxonomy import (
    MAX_CONCEPT_CHARS,
    Category,
    Taxonomy,
    concept_problem,
    load_taxonomy,
    look_alike_key,
    normalize_concept,
)
from coprov2.taxonomy_config import TaxonomyConfig

TAXONOMY_FILE = "taxonomy.yaml"


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
    known = {look_alike_key(name) for names in concepts.values() for name in names}
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
                items = parse_answer(answer.text, "concepts", n, answer.finish_reason)
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
                key = look_alike_key(concept)
                reason = Reason.INVALID_CONCEPT if problem else Reason.DUPLICATE if key in known else None
                if reason is not None:
                    rejected.append({**base, "reason": reason.value, "detail": problem or "", "text": item})
                    continue
                known.add(key)
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


ADDED_SCHEMA = pa.schema(
    [
        ("step", pa.string()),
        ("category", pa.string()),
        ("round", pa.int64()),
        ("seed", pa.int64()),
        ("concept", pa.string()),
    ]
)


class TaxonomyStage(Stage):
    """Stage ``taxonomy``: load (and limit) the taxonomy, expand it if asked, write ``taxonomy.yaml``.

    A one-shard stage (so one process does it); its rows are the added concepts and its
    ``taxonomy.yaml`` the resolved taxonomy that the prompts stage reads. ``backend`` is called only
    when an expansion actually has to run (a finished stage needs no LLM).
    """

    name = "taxonomy"
    schema = ADDED_SCHEMA
    #: Read as content: the taxonomy's and the template's fingerprints are inputs.
    OUTPUT_NEUTRAL = frozenset({"concepts", "templates_dir"} | {f"llm.{n}" for n in LLM_OUTPUT_NEUTRAL})

    def __init__(self, config: TaxonomyConfig, backend: Callable[[], LLMBackend]) -> None:
        super().__init__(config)
        self.backend = backend
        self.base = load_taxonomy(config.concepts).limited(config.limit_concepts)
        self.template = load_template("expand_concepts", config.templates_dir)

    def num_shards(self, root: Path) -> int:
        return 1

    def fingerprint(self, root: Path) -> dict[str, Any]:
        fingerprint = {**super().fingerprint(root), "taxonomy": self.base.fingerprint()}
        if not self.config.expand_to:  # nothing of the LLM side reaches the output
            for key in ("expand_batch", "max_retries", "llm"):
                fingerprint.pop(key)
        else:
            fingerprint["template"] = self.template.fingerprint()
        return fingerprint

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        if writer.committed:
            return
        if not self.config.expand_to:
            writer.commit([])
            return
        _, result = expand_taxonomy(
            self.base,
            self.backend(),
            self.template,
            target=self.config.expand_to,
            batch=self.config.expand_batch,
            max_stalls=self.config.max_retries + 1,
            sampling=self.config.llm.sampling(),
            seed=self.config.seed,
        )
        writer.commit_result(result)

    def summarize(self, stage_dir: StageDir) -> dict[str, Any]:
        atomic_write_text(stage_dir.dir / TAXONOMY_FILE, self.resolved(stage_dir).to_yaml())
        return {}

    def resolved(self, stage_dir: StageDir) -> Taxonomy:
        return with_added_concepts(self.base, stage_dir.read_shard(0))


def read_stage_taxonomy(root: Path) -> Taxonomy:
    """The taxonomy a finished ``taxonomy`` stage resolved (what the later stages use)."""
    path = Path(root) / "taxonomy" / TAXONOMY_FILE
    if not path.exists():
        raise UserError(f"{path} is missing: run the build's taxonomy stage first")
    return load_taxonomy(path)


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
