"""vLLM's offline engine: the whole batch of requests in one ``LLM.chat`` call, JSON-schema guided."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from coprov2.llm.base import LLMAnswer, LLMRequest


class VLLMBackend:
    guided = True

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_model_len: int | None = 4096,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        seed: int = 0,
        cpu_kv_cache_gib: int = 1,
        show_progress: bool = True,
    ) -> None:
        engine_options: dict[str, object] = {}
        if not torch.cuda.is_available():
            # vLLM's CPU build sizes its KV cache from this variable (the GPU fraction does not apply),
            # and an in-process engine spares library users the spawn/``__main__`` guard.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # A partly prefilled request has its sampled token discarded and its seeded generator
            # rewound by offset, which CPU generators cannot do ("CPU Generator does not use offset");
            # so on CPU every prompt is prefilled whole, never chunked.
            engine_options = {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max_model_len or 8192,
            }
        from vllm import LLM

        self.model = model
        self.show_progress = show_progress
        self.llm = LLM(
            model=model,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=seed,
            # Compact JSON: the per-request whitespace flag has no effect, the engine-level one does.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            **engine_options,
        )

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not requests:
            return []
        params = [
            SamplingParams(
                max_tokens=r.max_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=r.seed,
                structured_outputs=StructuredOutputsParams(json=r.schema) if r.schema else None,
            )
            for r in requests
        ]
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=self.show_progress)
        return [
            LLMAnswer(o.outputs[0].text, o.outputs[0].finish_reason, {"tokens": len(o.outputs[0].token_ids)})
            for o in outputs
        ]
