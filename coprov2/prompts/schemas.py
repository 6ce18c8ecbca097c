"""JSON schemas for the LLM answers; guided decoding (vLLM / xgrammar) enforces them while sampling.

A rule goes into the schema when the schema can say it: the concept inside every unsafe prompt (a
regex ``pattern``), the item counts, a length bound. xgrammar rejects ``pattern`` together with
``maxLength`` on one string, so the unsafe prompt's length bound lives in the pattern's repetition
counts. The validators check every rule again, for backends without guided decoding.
"""

from __future__ import annotations

from typing import Any

_REGEX_SPECIALS = set("\\^$.|?*+()[]{}-/")


def concept_regex(concept: str) -> str:
    """A case-insensitive regex for ``concept`` in the syntax guided decoders accept (no inline flags)."""
    parts = []
    for char in concept:
        upper, lower = char.upper(), char.lower()
        if upper != lower and len(upper) == 1 and len(lower) == 1:
            parts.append(f"[{upper}{lower}]")
        elif char in _REGEX_SPECIALS:
            parts.append("\\" + char)
        else:
            parts.append(char)
    return "".join(parts)


def _object(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: value}, "required": [key], "additionalProperties": False}


def unsafe_prompt_pattern(concept: str, max_chars: int) -> str:
    """One line holding ``concept`` as a whole word (no letter or digit glued to it), ~``max_chars`` at most."""
    room = max(max_chars - len(concept) - 1, 0)
    before = f"([^\\n]{{0,{room}}}[^A-Za-z0-9\\n])?"
    after = f"([^A-Za-z0-9\\n][^\\n]{{0,{room}}})?"
    return f"^{before}{concept_regex(concept)}{after}$"


def unsafe_prompts_schema(concept: str, n: int, max_chars: int) -> dict[str, Any]:
    """``{"prompts": [n strings]}``, each string containing ``concept``, about ``max_chars`` long at most."""
    item = {"type": "string", "pattern": unsafe_prompt_pattern(concept, max_chars)}
    return _object("prompts", {"type": "array", "items": item, "minItems": n, "maxItems": n})


def safe_twin_schema(max_chars: int) -> dict[str, Any]:
    return _object("safe_prompt", {"type": "string", "minLength": 1, "maxLength": max_chars})


def concepts_schema(n: int, max_chars: int) -> dict[str, Any]:
    item = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return _object("concepts", {"type": "array", "items": item, "minItems": n, "maxItems": n})
