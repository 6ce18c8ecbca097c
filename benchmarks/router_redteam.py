"""The toy red-team against the routed model: does the router catch Ring-A-Bell's prompts, which avoid the concept's
word, and does the routed model resist them as well as the merge?

On a finished ``benchmarks/merge_scaling.py`` run (its base, its N = 7 experts, its ``regmean`` merge and its routed
model, per seed): for each of the seven independent toy concepts, Ring-A-Bell (``evaluation.toy_redteam``, the real
attack stage with the toy settings, the concept's object word banned) searches prompts against the base. Measured
on those prompts: the router's recall (the share routed to the attacked concept) and the share routed to any
expert; the attack success (ASR: the share of samples nearest the concept's unsafe colour, of four centroids) for
the base, the merge and the routed model, same seeds; and, as the reference, the same for random prompts of the same
length (what any prompt gets). The recall is also measured for routers of every head (``merge.router.config.HEADS``,
trained here on the run's N = 7 dataset with the seed), the routed model being the run's (the default head).

    python benchmarks/router_redteam.py --root /tmp/msr --seeds 0 1 2 --out /tmp/router-redteam

Resumable: each (seed, concept) row is appended to ``OUT/rows.jsonl`` when measured, and a rerun measures only the
missing ones, so seeds can run in several processes and a last call with every seed prints the whole table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import DiffusionPipeline
from merge_scaling import T95

from dpo.toy import toy_concepts
from evaluation.ringabell import Vocabulary
from evaluation.toy_redteam import (
    attack_samples,
    judged_colours,
    nearest_unsafe,
    random_prompts,
    toy_attack_outcome,
    unsafe_share,
)
from merge.router import ConceptRouter, RoutedPipeline, RouterConfig, train_router
from merge.router.config import HEADS

N = 7


def share(pipe, concept, prompts: list[str], seed: int, routed: RoutedPipeline | None = None) -> float:
    """The attack success on ``prompts``: ``evaluation.toy_redteam.unsafe_share``, its samples drawn per route
    group for the routed model."""
    if routed is None:
        return unsafe_share(pipe, concept, prompts, seed)
    parts = []
    for route, members in routed.groups(routed.routes(prompts)).items():
        with routed.activate(route):
            parts.append(attack_samples(routed.pipe, [prompts[i] for i in members], seed))
    return nearest_unsafe(torch.cat(parts), judged_colours(pipe, concept))


def interval(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (
        T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
        if len(values) > 1
        else 0.0
    )
    return f"{mean:.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a merge_scaling.py run (placement all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = args.root / "base"
    concepts = toy_concepts(N)
    log = args.out / "rows.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows = [r for r in done if r["seed"] in args.seeds]
    for seed in args.seeds:
        if sum(r["seed"] == seed for r in rows) == N:
            continue
        here = args.root / f"seed-{seed}"
        base_pipe = DiffusionPipeline.from_pretrained(str(base))
        merged = DiffusionPipeline.from_pretrained(str(base))
        merged.load_lora_weights(str(here / f"N{N}" / "regmean"))
        routed_pipe = DiffusionPipeline.from_pretrained(str(base))
        experts = {c.name: str(here / "experts" / c.name) for c in concepts}
        routed = RoutedPipeline(
            routed_pipe, ConceptRouter.from_pretrained(str(here / f"N{N}" / "routed")), experts
        )
        for pipe in (base_pipe, merged, routed_pipe):
            pipe.set_progress_bar_config(disable=True)
        vocabulary = Vocabulary.of(base_pipe.tokenizer)
        heads = {}
        for head in HEADS:
            folder = args.out / f"seed-{seed}" / f"router-{head}"
            if not (folder / "model.safetensors").exists():
                train_router(RouterConfig(dataset=str(args.root / f"data-{N}"), base=str(base), output_dir=str(folder),
                                          head=head, seed=seed, cache_dir=str(args.root / "cache"), progress=False))  # fmt: skip
            heads[head] = ConceptRouter.from_pretrained(str(folder))
        for concept in concepts:
            if any(r["seed"] == seed and r["concept"] == concept.name for r in rows):
                continue
            outcome = toy_attack_outcome(args.out / f"seed-{seed}" / concept.name, concept, base, seed)
            prompts = outcome["prompts"]
            rand = random_prompts(vocabulary, len(prompts), 16, seed)
            routes = routed.routes(prompts)
            random_routes = routed.routes(rand)
            row = {
                "seed": seed, "concept": concept.name, "prompts": prompts,
                "routes": [list(r.categories) for r in routes],
                "recall": statistics.fmean(concept.name in r.categories for r in routes),
                "routed_any": statistics.fmean(bool(r.categories) for r in routes),
                "random_routed_any": statistics.fmean(bool(r.categories) for r in random_routes),
                "asr_base": share(base_pipe, concept, prompts, seed),
                "asr_merged": share(merged, concept, prompts, seed),
                "asr_routed": share(routed_pipe, concept, prompts, seed, routed),
                "random_base": share(base_pipe, concept, rand, seed),
                "word_in_prompts": outcome["word_in_prompts"],
                **{f"recall_{head}": statistics.fmean(concept.name in r.categories for r in router.route(base_pipe, prompts))
                   for head, router in heads.items()},
                **{f"routed_any_{head}": statistics.fmean(bool(r.categories) for r in router.route(base_pipe, prompts))
                   for head, router in heads.items()},
                **{f"random_routed_any_{head}": statistics.fmean(bool(r.categories) for r in router.route(base_pipe, rand))
                   for head, router in heads.items()},
            }  # fmt: skip
            rows.append(row)
            with log.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in ("prompts", "routes")}), flush=True)
    keys = [
        "recall",
        "routed_any",
        "random_routed_any",
        "asr_base",
        "asr_merged",
        "asr_routed",
        "random_base",
        *(f"{k}_{head}" for head in HEADS for k in ("recall", "routed_any", "random_routed_any")),
    ]
    print("\n| measure | mean over seeds x concepts ± 95% |\n|---|---|")
    for key in keys:
        print(f"| {key} | {interval([r[key] for r in rows])} |")
    per_seed = {s: [r for r in rows if r["seed"] == s] for s in args.seeds}
    print(
        "\n| seed | recall | ASR base | ASR merged | ASR routed | ASR random prompts (base) |\n|---|---|---|---|---|---|"
    )
    for s, mine in per_seed.items():
        cells = [
            statistics.fmean(r[k] for r in mine)
            for k in ("recall", "asr_base", "asr_merged", "asr_routed", "random_base")
        ]
        print(f"| {s} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print("\n| concept | recall (its attack prompts routed to it) | precision (attack prompts routed to it that attack it) "
          "| ASR base | ASR merged | ASR routed |\n|---|---|---|---|---|---|")  # fmt: skip
    for concept in concepts:
        mine = [r for r in rows if r["concept"] == concept.name]
        hits = sum(concept.name in route for r in mine for route in r["routes"])
        routed_to = sum(concept.name in route for r in rows for route in r["routes"])
        precision = f"{hits / routed_to:.2f} ({routed_to} prompts)" if routed_to else "- (0 prompts)"
        cells = [
            statistics.fmean(r[k] for r in mine) for k in ("recall", "asr_base", "asr_merged", "asr_routed")
        ]
        print(
            f"| {concept.name} | {cells[0]:.2f} | {precision} | "
            + " | ".join(f"{c:.3f}" for c in cells[1:])
            + " |"
        )
    merged_asr, routed_asr = (statistics.fmean(r[k] for r in rows) for k in ("asr_merged", "asr_routed"))
    print(f"\nrouted / merged ASR: {routed_asr / merged_asr:.2f}x" if merged_asr else "\nmerged ASR 0")


if __name__ == "__main__":
    main()
