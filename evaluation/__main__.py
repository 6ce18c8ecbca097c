"""``python -m evaluation``: render a prompt set with a base model and its LoRAs, score IP, CLIPScore and
FID, write ``results.json``, the table and the chart (one call: ``evaluation.evaluate(config)``).

Examples::

    python -m evaluation --prompts CoProv2_test.csv --loras experts/violence merged --metrics ip clipscore
    accelerate launch -m evaluation --prompts i2p_benchmark.csv --loras merged --images_per_prompt 10
    python -m evaluation --prompts CoProv2_test.csv --release_compatible --loras merged
"""

from __future__ import annotations

import logging
import sys

from coprov2.cli import DataclassArgumentParser
from coprov2.errors import run_cli
from evaluation.config import EvalConfig
from evaluation.run import evaluate


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        EvalConfig,
        prog="python -m evaluation",
        description=(
            "Evaluate a text-to-image model and its safety LoRAs the way the field does: IP (an image is "
            "inappropriate when Q16 or NudeNet flags it), CLIPScore and FID, overall and per category. Rendering "
            "and scoring are sharded over accelerate processes and resume after an interruption."
        ),
    )


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    (config,) = make_parser().parse_args_into_dataclasses(args=argv)
    return config


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = evaluate(parse_args(argv))
    from evaluation.report import markdown_table

    print(markdown_table(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
