"""Prompt pairs per second: vLLM batching vs a transformers ``generate`` loop, same tiny LM, one run.

What is compared: the stage's own requests (unsafe prompts, then safe twins) for a few concepts of
each category. vLLM serves them through ``generate_pairs`` exactly as ``python -m coprov2.build``
does (one batch per step, JSON-schema guided). The reference replays the very same requests one at a
time through ``model.generate``, each forced to the number of tokens vLLM generated for it, so both
sides do identical work; the reference's time is what a loop needs for the same pairs.

    python benchmarks/prompts_throughput.py [--concepts-per-category 2] [--prompts-per-concept 2]

Engine start-up is reported apart from throughput. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from coprov2.llm.vllm_offline import VLLMBackend
from coprov2.prompts.config import PromptsConfig
from coprov2.prompts.generate import generate_pairs
from coprov2.prompts.stage import clip_token_counter
from coprov2.prompts.templates import load_template
from coprov2.prompts.validate import PromptChecker
from coprov2.taxonomy import load_taxonomy
from coprov2.tiny import write_tiny_models

PAPER_CONCEPTS = 723
PAPER_PAIRS = 23_690


class Recording:
    """Wraps a backend; keeps every request, its generated token count and the time spent generating."""

    def __init__(self, backend):
        self.backend, self.model, self.guided = backend, backend.model, backend.guided
        self.calls: list[tuple] = []
        self.seconds = 0.0

    def generate(self, requests):
        start = time.perf_counter()
        answers = self.backend.generate(requests)
        self.seconds += time.perf_counter() - start
        self.calls.extend(zip(requests, (a.meta["tokens"] for a in answers), strict=True))
        return answers


def replay_with_transformers(model_dir: Path, calls) -> float:
    """Seconds for a one-request-per-call ``generate`` loop over ``calls``, same token counts."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for request, n_tokens in calls:
            inputs = tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            torch.manual_seed(request.seed)
            model.generate(
                **inputs,
                do_sample=True,
                temperature=request.temperature,
                top_p=request.top_p,
                min_new_tokens=n_tokens,
                max_new_tokens=n_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts-per-category", type=int, default=2)
    parser.add_argument("--prompts-per-concept", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    models = write_tiny_models(tempfile.mkdtemp(prefix="bench-tiny-"), ["lm", "sd15"])
    taxonomy = load_taxonomy().limited(args.concepts_per_category)
    concepts = taxonomy.concepts()
    config = PromptsConfig(prompts_per_concept=args.prompts_per_concept, max_retries=1, max_prompt_chars=48)
    templates = {name: load_template(name) for name in ("unsafe_prompts", "safe_twin")}
    checker = PromptChecker(clip_token_counter(str(models["sd15"])), 77)
    sampling = {"max_tokens": args.max_tokens, "temperature": 1.0, "top_p": 0.95}

    start = time.perf_counter()
    vllm = Recording(
        VLLMBackend(
            str(models["lm"]),
            dtype="float32",
            enforce_eager=True,
            gpu_memory_utilization=0.2,
            max_model_len=2048,
            show_progress=False,
        )
    )
    startup = time.perf_counter() - start
    result = generate_pairs(concepts, taxonomy, vllm, checker, templates, config, sampling, seed=0)
    pairs = len(result.records)
    tokens = sum(n for _, n in vllm.calls)

    torch.set_num_threads(threads)  # vLLM lowers torch's threads for itself; give the reference all of them
    loop_seconds = replay_with_transformers(models["lm"], vllm.calls)

    print(
        f"tiny LM (Llama-shaped, hidden 128), {len(concepts)} concepts x {args.prompts_per_concept} prompts, CPU, {threads} torch threads"
    )
    print(f"vLLM engine start-up (not in throughput): {startup:.1f} s\n")
    print("| backend | requests | generated tokens | seconds | tokens/s | pairs/s |")
    print("|---|---|---|---|---|---|")
    for name, seconds in (
        ("vLLM, batched + guided", vllm.seconds),
        ("transformers generate loop", loop_seconds),
    ):
        print(
            f"| {name} | {len(vllm.calls)} | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} | {pairs / seconds:.2f} |"
        )
    print(f"\nratio vLLM / loop (pairs per second): {loop_seconds / vllm.seconds:.1f}x")
    print(f"valid pairs: {pairs}; rejected items: {sum(result.stats['rejected'].values())}")

    # Scaling: with no rejection the stage sends one unsafe request per concept and one twin request per pair.
    per_concept = PAPER_PAIRS / PAPER_CONCEPTS
    requests_min = PAPER_CONCEPTS + PAPER_PAIRS
    tokens_per_request = tokens / len(vllm.calls)
    print(
        f"\nScaling to the paper's {PAPER_CONCEPTS} concepts (~{per_concept:.0f} pairs each, {PAPER_PAIRS:,} pairs): "
        f"at least {requests_min:,} requests ({PAPER_CONCEPTS} unsafe-prompt requests of {per_concept:.0f} prompts, "
        f"{PAPER_PAIRS:,} twin requests), more by the rejection rate. Each shard's requests go to vLLM as one "
        f"batch; with --num_shards S and N processes (accelerate launch), each runs S/N shards on its own engine. "
        f"At this run's {tokens_per_request:.0f} tokens/request and vLLM rate, the minimum would take "
        f"{requests_min * tokens_per_request / (tokens / vllm.seconds) / 3600:.1f} h on this CPU with the tiny LM; "
        "real throughput depends on the model and GPU and is not measured here."
    )


if __name__ == "__main__":
    main()
