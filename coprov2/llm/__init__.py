"""LLM backends behind one interface (:class:`LLMBackend`): vLLM offline, an OpenAI-compatible
endpoint, transformers ``generate``. Modules import their engine lazily: vLLM is an optional extra."""

from __future__ import annotations

from coprov2.errors import UserError
from coprov2.llm.base import LLMAnswer, LLMBackend, LLMRequest
from coprov2.llm.config import BACKENDS, LLMConfig

__all__ = ["BACKENDS", "LLMAnswer", "LLMBackend", "LLMConfig", "LLMRequest", "make_backend"]


def make_backend(config: LLMConfig, *, seed: int = 0, show_progress: bool = True) -> LLMBackend:
    if config.backend == "vllm":
        from coprov2.llm.vllm_offline import VLLMBackend

        return VLLMBackend(
            config.model,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            seed=seed,
            show_progress=show_progress,
        )
    if config.backend == "openai":
        from coprov2.llm.openai_http import OpenAIHTTPBackend

        if not config.base_url:
            raise UserError("the openai backend needs --llm_base_url (e.g. http://localhost:8000/v1)")
        return OpenAIHTTPBackend(
            config.model,
            config.base_url,
            api_key_env=config.api_key_env,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            max_attempts=config.max_attempts,
            retry_backoff_s=config.retry_backoff_s,
            show_progress=show_progress,
        )
    if config.backend == "transformers":
        from coprov2.llm.hf_generate import TransformersBackend

        return TransformersBackend(config.model, dtype=config.dtype, show_progress=show_progress)
    raise UserError(f"unknown llm_backend {config.backend!r}; choose from {', '.join(BACKENDS)}")
