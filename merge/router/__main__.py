"""``python -m merge.router --dataset DATASET --base BASE --output_dir router``: train a concept router."""

from __future__ import annotations

import sys

from coprov2.cli import DataclassArgumentParser
from coprov2.errors import run_cli
from merge.router.config import RouterConfig
from merge.router.train import train_router


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        RouterConfig,
        prog="python -m merge.router",
        description="Train a concept router on a CoProV2 dataset: on the base's frozen text features, a small head "
        "scores each prompt per category, with thresholds set on held-out prompts. RoutedPipeline then applies, per "
        "prompt, only the experts of its categories. Writes model.safetensors + config.json "
        "(ConceptRouter.from_pretrained), router_summary.json and a card.",
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    (config,) = make_parser().parse_args_into_dataclasses(args=argv)
    summary = train_router(config)
    test = summary["test"]
    recalls = ", ".join(f"{c} {m['recall']:.2f}" for c, m in test["categories"].items())
    print(f"router over {len(summary['categories'])} categories in {config.output_dir}: test recall {recalls}; "
          f"neutral false-positive rate {test['neutral_false_positive_rate']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
