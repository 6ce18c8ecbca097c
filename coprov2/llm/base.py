"""The one small interface every LLM backend implements: a batch of chat requests in, texts out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion. ``schema`` (JSON schema) is enforced by backends that can guide decoding."""

    messages: list[dict[str, str]]
    seed: int
    schema: dict[str, Any] | None = None
    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 0.95


@dataclass(frozen=True)
class LLMAnswer:
    text: str
    #: "stop" when the model ended the answer, "length" when max_tokens cut it.
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class LLMBackend(Protocol):
    #: The model id or folder, recorded in manifests.
    model: str
    #: Whether ``schema`` is enforced while decoding (otherwise only the validators apply it).
    guided: bool

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        """Answers in request order. Implementations batch as much as they can."""
        ...
