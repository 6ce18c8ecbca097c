"""The router's heads compared in the toy world: prototype, linear and MLP, over seeds and world sizes.

For each N and seed: a router per head (``merge.router``, its defaults otherwise) trained on the toy dataset of the
first N concepts (``dpo.toy.write_toy_dataset``), on a toy base's text encoder. Measured: the test split's per-category
recall and precision (worst category), the false-positive rate on the held-out quarter of the shipped neutral list,
and the share of the toy's own neutral captions (``dpo.toy.NEUTRAL_CAPTIONS``, never trained on) routed to a category.

    python benchmarks/router_heads.py --base /tmp/msr/base --ns 7 28 --seeds 0 1 2 --out /tmp/router-heads
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from diffusers import DiffusionPipeline

from dpo.toy import NEUTRAL_CAPTIONS, toy_concepts, write_toy_dataset
from merge.router import ConceptRouter, RouterConfig, train_router
from merge.router.config import HEADS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a toy base (e.g. a merge_scaling.py run's base)")
    parser.add_argument("--ns", type=int, nargs="+", default=[7, 28])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pipe = DiffusionPipeline.from_pretrained(args.base)
    print(
        "| N | head | worst test recall | worst test precision | held-out neutral FPR | toy neutral captions routed |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.ns:
        data = args.out / f"data-{n}"
        if not data.exists():
            write_toy_dataset(data, toy_concepts(n))
        for head in HEADS:
            recall, precision, fpr, toy = [], [], [], []
            for seed in args.seeds:
                out = args.out / f"N{n}-{head}-{seed}"
                summary = train_router(RouterConfig(dataset=str(data), base=args.base, output_dir=str(out), head=head,
                                                    seed=seed, cache_dir=str(args.out / "cache"), progress=False))  # fmt: skip
                test = summary["test"]
                recall.append(min(m["recall"] for m in test["categories"].values()))
                precision.append(min(m["precision"] for m in test["categories"].values()))
                fpr.append(test["neutral_false_positive_rate"])
                routes = ConceptRouter.from_pretrained(str(out)).route(pipe, NEUTRAL_CAPTIONS)
                toy.append(statistics.fmean(bool(r.categories) for r in routes))
            cells = [
                f"{statistics.fmean(v):.2f} (min {min(v):.2f}, max {max(v):.2f})"
                for v in (recall, precision, fpr, toy)
            ]
            print(f"| {n} | {head} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
