"""A scripted LLM for the logic around the model (retries, bookkeeping): answers are chosen by the test.

The model itself is exercised for real in test_prompts_stage.py (vLLM's CPU engine on the tiny LM).
"""

from collections.abc import Callable, Sequence

from coprov2.llm import LLMAnswer, LLMRequest


class ScriptedLLM:
    guided = True
    model = "scripted"

    def __init__(self, answer: Callable[[LLMRequest], str]) -> None:
        self.answer = answer
        self.batches: list[list[LLMRequest]] = []

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        self.batches.append(list(requests))
        return [LLMAnswer(self.answer(r), "stop") for r in requests]
