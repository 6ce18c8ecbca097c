"""transformers ``generate``, one request at a time: the fallback when vLLM is not installed.

It has no guided decoding, so the JSON schema is only stated in the prompt and the validators reject
what does not comply; expect more retries than with vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from coprov2.llm.base import LLMAnswer, LLMRequest


class TransformersBackend:
    guided = False

    def __init__(
        self, model: str, *, dtype: str = "auto", device: str | None = None, show_progress: bool = True
    ):
        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.show_progress = show_progress

    @torch.no_grad()
    def _one(self, request: LLMRequest) -> LLMAnswer:
        inputs = self.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
            torch.manual_seed(request.seed)
            output = self.lm.generate(
                **inputs,
                do_sample=request.temperature > 0,
                temperature=request.temperature or None,
                top_p=request.top_p,
                max_new_tokens=request.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        ended = bool((new_tokens == self.tokenizer.eos_token_id).any())
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return LLMAnswer(text, "stop" if ended else "length", {"tokens": int(new_tokens.numel())})

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        return [self._one(r) for r in tqdm(requests, disable=not self.show_progress, desc="LLM requests")]
