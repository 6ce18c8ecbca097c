"""LLM backends behind one interface (:class:`LLMBackend`): vLLM offline, an OpenAI-compatible
endpoint, transformers ``generate``. Modules import their engine lazily: vLLM is an optional extra."""

from __future__ import annotations

from dataclasses import dataclass, field

from coprov2.llm.base import LLMAnswer, LLMBackend, LLMRequest

BACKENDS = ("vllm", "openai", "transformers")

__all__ = ["BACKENDS", "LLMAnswer", "LLMBackend", "LLMConfig", "LLMRequest", "make_backend"]


@dataclass
class LLMConfig:
    """Which LLM writes concepts and prompts, and how it runs."""

    llm_backend: str = field(
        default="vllm", metadata={"help": f"LLM backend: {', '.join(BACKENDS)}", "choices": BACKENDS}
    )
    llm_model: str = field(
        default="Qwen/Qwen2.5-7B-Instruct", metadata={"help": "LLM Hub id or local folder (any chat model)"}
    )
    llm_base_url: str | None = field(
        default=None, metadata={"help": "openai backend: server URL, e.g. http://localhost:8000/v1"}
    )
    llm_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "openai backend: environment variable holding the API key"},
    )
    llm_dtype: str = field(
        default="auto", metadata={"help": "weights dtype (auto, bfloat16, float16, float32)"}
    )
    llm_tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model replica"})
    llm_max_model_len: int = field(default=4096, metadata={"help": "vllm: context length to reserve"})
    llm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: GPU memory fraction"})
    llm_enforce_eager: bool = field(default=False, metadata={"help": "vllm: no CUDA graphs (faster start)"})
    llm_temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    llm_top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    llm_max_tokens: int = field(default=1024, metadata={"help": "cap on tokens per answer"})

    def sampling(self) -> dict[str, float | int]:
        """The :class:`LLMRequest` sampling fields."""
        return {
            "max_tokens": self.llm_max_tokens,
            "temperature": self.llm_temperature,
            "top_p": self.llm_top_p,
        }

    def identity(self) -> dict[str, object]:
        """What decides the LLM's answers (for stage configs): not parallelism, memory or URLs."""
        return {
            "backend": self.llm_backend,
            "model": self.llm_model,
            "dtype": self.llm_dtype,
            **self.sampling(),
        }


def make_backend(config: LLMConfig, *, seed: int = 0, show_progress: bool = True) -> LLMBackend:
    if config.llm_backend == "vllm":
        from coprov2.llm.vllm_offline import VLLMBackend

        return VLLMBackend(
            config.llm_model,
            dtype=config.llm_dtype,
            tensor_parallel_size=config.llm_tensor_parallel_size,
            max_model_len=config.llm_max_model_len,
            gpu_memory_utilization=config.llm_gpu_memory_utilization,
            enforce_eager=config.llm_enforce_eager,
            seed=seed,
            show_progress=show_progress,
        )
    if config.llm_backend == "openai":
        from coprov2.llm.openai_http import OpenAIHTTPBackend

        if not config.llm_base_url:
            raise ValueError("the openai backend needs --llm_base_url (e.g. http://localhost:8000/v1)")
        return OpenAIHTTPBackend(
            config.llm_model,
            config.llm_base_url,
            api_key_env=config.llm_api_key_env,
            show_progress=show_progress,
        )
    if config.llm_backend == "transformers":
        from coprov2.llm.hf_generate import TransformersBackend

        return TransformersBackend(config.llm_model, dtype=config.llm_dtype, show_progress=show_progress)
    raise ValueError(f"unknown llm_backend {config.llm_backend!r}; choose from {', '.join(BACKENDS)}")
