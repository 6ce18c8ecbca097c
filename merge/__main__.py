"""``python -m merge --experts A B C --method comerge --calibration DATASET --output_dir merged``."""

from __future__ import annotations

import sys

from coprov2.cli import DataclassArgumentParser
from coprov2.errors import run_cli
from coprov2.paths import check_writable_dir
from merge.run import MergeConfig, run_merge


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        MergeConfig,
        prog="python -m merge",
        description="Merge LoRA safety experts (from dpo.train, or any diffusers LoRA) into one LoRA for "
        "pipe.load_lora_weights: Co-Merge (calibrated per output channel, or per weight + SVD) or a baseline "
        "(linear, sum, ties, dare_linear, dare_ties). Writes the LoRA, merge_summary.json and a model card.",
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    (config,) = make_parser().parse_args_into_dataclasses(args=argv)
    check_writable_dir(config.output_dir, "--output_dir")
    summary = run_merge(config)
    print(
        f"merged {len(summary['experts'])} experts with {summary['method']} (rank {summary['rank']}) into {config.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
