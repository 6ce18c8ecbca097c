"""Which LLM writes concepts and prompts, and how it is reached (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("vllm", "openai", "transformers")

#: LLM fields that decide where answers come from and how hard to try, not what they are: resume guards
#: skip them (test_llm_backends.py::test_a_flaky_server_gives_the_same_pairs_as_a_healthy_one changes
#: all of them between two runs and gets the same bytes). Everything else, parallelism and memory
#: settings included (they can change batching, hence low bits of the logits), is in the guard.
LLM_OUTPUT_NEUTRAL = frozenset(
    {"base_url", "api_key_env", "concurrency", "timeout_s", "max_attempts", "retry_backoff_s"}
)


@dataclass
class LLMConfig:
    """The LLM, its sampling, and (openai backend) how hard to try a flaky server."""

    backend: str = field(
        default="vllm", metadata={"help": f"LLM backend: {', '.join(BACKENDS)}", "choices": BACKENDS}
    )
    model: str = field(
        default="Qwen/Qwen2.5-7B-Instruct", metadata={"help": "LLM Hub id or local folder (any chat model)"}
    )
    base_url: str | None = field(
        default=None, metadata={"help": "openai backend: server URL, e.g. http://localhost:8000/v1"}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "openai backend: environment variable holding the API key"},
    )
    dtype: str = field(default="auto", metadata={"help": "weights dtype (auto, bfloat16, float16, float32)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model replica"})
    max_model_len: int = field(default=4096, metadata={"help": "vllm: context length to reserve"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: GPU memory fraction"})
    enforce_eager: bool = field(default=False, metadata={"help": "vllm: no CUDA graphs (faster start)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    max_tokens: int = field(default=1024, metadata={"help": "cap on tokens per answer"})
    concurrency: int = field(default=32, metadata={"help": "openai: requests in flight"})
    timeout_s: float = field(default=600.0, metadata={"help": "openai: seconds before a request times out"})
    max_attempts: int = field(
        default=6, metadata={"help": "openai: tries per request on 429/5xx/connection errors/timeouts"}
    )
    retry_backoff_s: float = field(
        default=1.0, metadata={"help": "openai: first retry delay; doubles per attempt, with jitter"}
    )

    def sampling(self) -> dict[str, float | int]:
        """The :class:`~coprov2.llm.base.LLMRequest` sampling fields."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
