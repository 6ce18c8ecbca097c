"""Prompt pairs for a list of concepts: K unsafe prompts per concept, then one safe twin per prompt.

Both steps send every pending request of the shard to the backend in one batch (vLLM batches them),
validate each answer item by item, and retry only what is still missing, with a new seed per attempt,
at most ``max_retries`` times. Every rejected answer or item is returned with its reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coprov2.llm import LLMBackend, LLMRequest
from coprov2.prompts.config import PromptsConfig
from coprov2.prompts.schemas import safe_twin_schema, unsafe_prompts_schema
from coprov2.prompts.templates import ChatTemplate
from coprov2.prompts.validate import (
    AnswerRejected,
    PromptChecker,
    Reason,
    clean_text,
    dedup_key,
    parse_answer,
)
from coprov2.seeds import derive_seed
from coprov2.stage_io import ShardResult
from coprov2.taxonomy import Concept, Taxonomy

#: Rejected texts are kept for inspection, cut to this many characters.
MAX_KEPT_TEXT = 1000


def pair_id(concept: Concept, unsafe_prompt: str) -> str:
    """Stable id of a pair: it depends on its content, not on its position in a run."""
    return hashlib.sha256(f"{concept.id}\x1f{unsafe_prompt}".encode()).hexdigest()[:16]


def rejection_record(
    step: str,
    concept: Concept,
    request: LLMRequest,
    attempt: int,
    reason: Reason,
    text: str,
    detail: str = "",
) -> dict[str, Any]:
    """One rejected answer or item, with its reason, as written to the stage's rejected files."""
    return {
        "step": step,
        "category": concept.category,
        "concept": concept.name,
        "attempt": attempt,
        "seed": request.seed,
        "reason": reason.value,
        "detail": detail,
        "text": text[:MAX_KEPT_TEXT],
    }


@dataclass
class _Slot:
    concept: Concept
    unsafe_prompt: str
    unsafe_seed: int
    safe_prompt: str | None = None
    safe_seed: int | None = None


def generate_pairs(
    concepts: Sequence[Concept],
    taxonomy: Taxonomy,
    backend: LLMBackend,
    checker: PromptChecker,
    templates: Mapping[str, ChatTemplate],
    config: PromptsConfig,
    sampling: Mapping[str, Any],
    seed: int,
) -> ShardResult:
    """Validated (unsafe, safe) pairs for ``concepts``; ``sampling`` holds LLMRequest sampling fields."""
    rejected: list[dict[str, Any]] = []
    requests_sent: Counter[str] = Counter()
    slots: dict[Concept, list[_Slot]] = {concept: [] for concept in concepts}
    seen_unsafe: set[str] = set()

    for attempt in range(config.max_retries + 1):
        todo = [(c, config.prompts_per_concept - len(slots[c])) for c in concepts]
        todo = [(c, n) for c, n in todo if n > 0]
        if not todo:
            break
        requests = []
        for concept, n in todo:
            category = taxonomy.category(concept.category)
            messages = templates["unsafe_prompts"].render(
                n=n,
                concept=concept.name,
                category_name=category.name,
                category_description=category.description,
                max_chars=config.max_prompt_chars,
            )
            schema = unsafe_prompts_schema(concept.name, n, config.max_prompt_chars)
            requests.append(
                LLMRequest(messages, derive_seed(seed, "unsafe", concept.id, attempt), schema, **sampling)
            )
        requests_sent["unsafe"] += len(requests)
        for (concept, n), request, answer in zip(todo, requests, backend.generate(requests), strict=True):
            try:
                items = parse_answer(answer.text, "prompts", n, answer.finish_reason)
            except AnswerRejected as error:
                rejected.append(
                    rejection_record(
                        "unsafe", concept, request, attempt, error.reason, answer.text, error.detail
                    )
                )
                continue
            for item in items:
                prompt = clean_text(item)
                reason = checker.check_unsafe(prompt, concept.name, seen_unsafe)
                if reason is not None:
                    rejected.append(rejection_record("unsafe", concept, request, attempt, reason, item))
                    continue
                seen_unsafe.add(dedup_key(prompt))
                slots[concept].append(_Slot(concept, prompt, request.seed))

    all_slots = [slot for concept in concepts for slot in slots[concept]]
    seen_safe: set[str] = set()
    for attempt in range(config.max_retries + 1):
        todo_slots = [slot for slot in all_slots if slot.safe_prompt is None]
        if not todo_slots:
            break
        requests = []
        for slot in todo_slots:
            category = taxonomy.category(slot.concept.category)
            messages = templates["safe_twin"].render(
                unsafe_prompt=slot.unsafe_prompt,
                concept=slot.concept.name,
                category_name=category.name,
                max_chars=config.max_prompt_chars,
            )
            twin_seed = derive_seed(seed, "twin", slot.concept.id, slot.unsafe_prompt, attempt)
            requests.append(
                LLMRequest(messages, twin_seed, safe_twin_schema(config.max_prompt_chars), **sampling)
            )
        requests_sent["twin"] += len(requests)
        for slot, request, answer in zip(todo_slots, requests, backend.generate(requests), strict=True):
            try:
                twin = clean_text(
                    parse_answer(answer.text, "safe_prompt", finish_reason=answer.finish_reason)
                )
            except AnswerRejected as error:
                rejected.append(
                    rejection_record(
                        "twin", slot.concept, request, attempt, error.reason, answer.text, error.detail
                    )
                )
                continue
            reason = checker.check_twin(twin, slot.unsafe_prompt, slot.concept.name, seen_safe)
            if reason is not None:
                rejected.append(rejection_record("twin", slot.concept, request, attempt, reason, twin))
                continue
            seen_safe.add(dedup_key(twin))
            slot.safe_prompt, slot.safe_seed = twin, request.seed

    pairs = [
        {
            "id": pair_id(slot.concept, slot.unsafe_prompt),
            "category": slot.concept.category,
            "concept": slot.concept.name,
            "unsafe_prompt": slot.unsafe_prompt,
            "safe_prompt": slot.safe_prompt,
            "unsafe_request_seed": slot.unsafe_seed,
            "safe_request_seed": slot.safe_seed,
        }
        for slot in all_slots
        if slot.safe_prompt is not None
    ]
    stats = {
        "concepts": Counter(c.category for c in concepts),
        "pairs": Counter(pair["category"] for pair in pairs),
        "unpaired_unsafe_prompts": Counter(s.concept.category for s in all_slots if s.safe_prompt is None),
        "concepts_short_of_target": Counter(
            c.category for c in concepts if len(slots[c]) < config.prompts_per_concept
        ),
        "rejected": Counter(f"{r['step']}/{r['reason']}" for r in rejected),
        "requests": requests_sent,
    }
    return ShardResult(pairs, rejected, {key: dict(sorted(value.items())) for key, value in stats.items()})
