"""``python -m workflow RECIPE.yaml``: dataset -> an expert per category -> merge -> evaluation -> cards -> push.

Rerun the same command after an interruption: finished steps are skipped, the others resume. Examples::

    python -m workflow workflow/recipes/tiny.yaml --output_dir tiny-run          # offline, tiny models, minutes
    python -m workflow workflow/recipes/sd15.yaml --output_dir safetydpo-sd15    # the paper's, on a GPU
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from coprov2.cli import ArgumentParser
from coprov2.errors import run_cli
from workflow.config import load_recipe
from workflow.run import run_workflow


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m workflow",
        description="The paper's workflow in one resumable command: a CoProV2 dataset (built, imported from the "
        "release, a folder or a Hub id) -> one Diffusion-DPO safety expert per category -> their merge -> evaluation "
        "on the test prompts (and more prompt sets) with report.html -> model cards with their model-index -> an "
        "optional private push. Shipped recipes: workflow/recipes/tiny.yaml (offline), workflow/recipes/sd15.yaml.",
    )
    parser.add_argument("recipe", type=Path, help="recipe YAML (see workflow/recipes/)")
    parser.add_argument("--output_dir", help="where every step writes (overrides the recipe's)")
    parser.add_argument("--dataset", help="a CoProV2 dataset folder or Hub id instead of the recipe's source")
    parser.add_argument(
        "--push_experts", help="Hub repo per expert, with {category} (e.g. me/sd15-safety-{category})"
    )
    parser.add_argument("--push_merged", help="Hub repo of the merged LoRA")
    parser.add_argument(
        "--dry_run", action="store_true", default=None, help="print the Hub calls instead of pushing"
    )
    parser.add_argument(
        "--no_progress", dest="progress", action="store_false", default=None, help="no progress bars"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "recipe" and v is not None}
    if args.dataset:  # a given dataset replaces the recipe's source
        overrides.update(build=None, release=None)
    config = load_recipe(args.recipe, **overrides)
    records = run_workflow(config)
    for name, record in records.items():
        state = "skipped, done before" if record.get("skipped") else f"done in {record['seconds']} s"
        print(f"{name}: {state}")
    report = config.root / "eval-test" / "report.html"
    print(f"done: {config.output_dir} (report: {report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
