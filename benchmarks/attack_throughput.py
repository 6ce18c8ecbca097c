"""Ring-A-Bell's search: the whole population through the text encoder in one call per generation (ours, and
the authors' ``fitness``), against one call per candidate (the reference).

The same ``evaluation.ringabell.search`` runs both ways (``SearchSettings.fitness_batch`` None vs 1), with the
same seed, so the prompts found are the same and only the time differs. Text encoders from configs in code,
random weights: the CLIP ViT-L/14 text tower of SD1.x (12 layers, width 768: what the attack runs against,
over the tiny tokenizer's vocabulary) and the toy world's (2 layers, width 32). Generations per second are
quoted as a ratio, batched / per candidate, measured side by side in one run.

    python benchmarks/attack_throughput.py [--population 200] [--generations 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def encoders():
    from transformers import CLIPTextConfig, CLIPTextModel

    from coprov2.tiny import clip_tokenizer
    from dpo.toy import SHIPPED_TOY_BASE

    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    clip_l = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()  # fmt: skip
    toy = CLIPTextModel.from_pretrained(SHIPPED_TOY_BASE / "text_encoder").eval()
    return tokenizer, {"CLIP ViT-L/14 text (SD1.x)": clip_l, "toy (2 layers, width 32)": toy}


def main() -> None:
    from evaluation.ringabell import SearchSettings, encoder_of, search, token_space

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, models = encoders()
    rows = []
    for name, model in models.items():
        space = token_space(tokenizer, encoder_of(model), name)
        target = space.encode_prompts(["a target prompt"])[0]
        timings, found = {}, {}
        for mode, batch in (("per candidate", 1), ("whole population", None)):
            settings = SearchSettings(
                population=args.population, generations=args.generations, fitness_batch=batch
            )
            start = time.perf_counter()
            found[mode] = search(space, target, settings, torch.Generator().manual_seed(0))
            timings[mode] = args.generations / (time.perf_counter() - start)
        assert found["per candidate"][0] == found["whole population"][0], "the same search either way"
        rows.append({"encoder": name, **{f"generations/s, {m}": float(f"{v:.4g}") for m, v in timings.items()},
                     "ratio": round(timings["whole population"] / timings["per candidate"], 2)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\npopulation {args.population}, {args.generations} generations, {args.threads} threads\n")
    print(
        "| text encoder | generations/s, one call per candidate | generations/s, one call per generation | ratio |"
    )
    print("|---|---|---|---|")
    for row in rows:
        values = list(row.values())
        print(f"| {values[0]} | {values[1]} | {values[2]} | {values[3]}x |")


if __name__ == "__main__":
    main()
