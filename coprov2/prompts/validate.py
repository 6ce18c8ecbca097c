"""Validators for LLM answers. Each rejection has a reason from :class:`Reason`; nothing is dropped silently.

Answers are parsed leniently where guided decoding is known to be sloppy (raw control characters
inside JSON strings, which strict ``json.loads`` refuses) and strictly everywhere else.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Reason(str, Enum):
    UNPARSEABLE = "unparseable"
    TRUNCATED = "truncated"
    SCHEMA_VIOLATION = "schema_violation"
    WRONG_COUNT = "wrong_count"
    EMPTY = "empty"
    TOO_LONG = "too_long"
    CONCEPT_MISSING = "concept_missing"
    CONCEPT_IN_SAFE = "concept_in_safe"
    TWIN_IDENTICAL = "twin_identical"
    DUPLICATE = "duplicate"
    INVALID_CONCEPT = "invalid_concept"


class AnswerRejected(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def clean_text(text: str) -> str:
    """Control and format characters become spaces; whitespace runs collapse to one space."""
    replaced = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return " ".join(replaced.split())


def parse_answer(
    text: str, key: str, count: int | None = None, finish_reason: str | None = None
) -> list[str] | str:
    """The value under ``key`` of a JSON object answer: a list of ``count`` strings, or one string.

    Tolerates text around the object (code fences, preambles) and raw control characters in strings.
    An answer the backend cut at ``max_tokens`` (``finish_reason == "length"``) is ``truncated``,
    whatever it holds: a cut list could still parse, one item short of what the model meant.
    """
    if finish_reason == "length":
        raise AnswerRejected(Reason.TRUNCATED, "the answer hit max_tokens; raise --llm_max_tokens")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise AnswerRejected(Reason.UNPARSEABLE, "no JSON object in the answer")
    try:
        value = json.loads(text[start : end + 1], strict=False)
    except json.JSONDecodeError as error:
        raise AnswerRejected(Reason.UNPARSEABLE, str(error)) from None
    if not isinstance(value, dict) or key not in value:
        raise AnswerRejected(Reason.SCHEMA_VIOLATION, f"expected an object with key {key!r}")
    if set(value) != {key}:
        raise AnswerRejected(Reason.SCHEMA_VIOLATION, f"unexpected keys {sorted(set(value) - {key})}")
    field = value[key]
    if count is None:
        if not isinstance(field, str):
            raise AnswerRejected(Reason.SCHEMA_VIOLATION, f"{key!r} must be a string")
        return field
    if not isinstance(field, list) or not all(isinstance(item, str) for item in field):
        raise AnswerRejected(Reason.SCHEMA_VIOLATION, f"{key!r} must be a list of strings")
    if len(field) != count:
        raise AnswerRejected(Reason.WRONG_COUNT, f"expected {count} items, got {len(field)}")
    return field


def _concept_pattern(concept: str) -> re.Pattern[str]:
    words = (re.escape(word) for word in concept.split())
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def contains_concept(text: str, concept: str) -> bool:
    """Whole-word, case-insensitive occurrence of ``concept`` (so 'arson' is not found in 'parson')."""
    return _concept_pattern(concept).search(text) is not None


def dedup_key(text: str) -> str:
    """Prompts equal up to case, punctuation and spacing are duplicates."""
    return " ".join(re.findall(r"\w+", text.casefold()))


@dataclass
class PromptChecker:
    """Item-level rules for unsafe prompts and safe twins. ``count_tokens`` is the T2I model's tokenizer."""

    count_tokens: Callable[[str], int]
    max_tokens: int = 77

    def _common(self, text: str) -> Reason | None:
        if not text:
            return Reason.EMPTY
        if self.count_tokens(text) > self.max_tokens:
            return Reason.TOO_LONG
        return None

    def check_unsafe(self, prompt: str, concept: str, seen: set[str]) -> Reason | None:
        reason = self._common(prompt)
        if reason is None and not contains_concept(prompt, concept):
            reason = Reason.CONCEPT_MISSING
        if reason is None and dedup_key(prompt) in seen:
            reason = Reason.DUPLICATE
        return reason

    def check_twin(self, twin: str, unsafe: str, concept: str, seen: set[str]) -> Reason | None:
        reason = self._common(twin)
        if reason is None and dedup_key(twin) == dedup_key(unsafe):
            reason = Reason.TWIN_IDENTICAL
        if reason is None and contains_concept(twin, concept):
            reason = Reason.CONCEPT_IN_SAFE
        if reason is None and dedup_key(twin) in seen:
            reason = Reason.DUPLICATE
        return reason
