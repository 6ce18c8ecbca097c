"""A shipped tiny recipe end to end, step by step, beside the tiny SD1.5 recipe on the same categories.

Each recipe runs cold (a new output folder, nothing cached) as ``python -m workflow`` in its own process; the step
times are the workflow's own records (``workflow/summary.json``), the wall time and peak memory the process's.
The reference is ``workflow/recipes/tiny.yaml`` with its ``categories`` set to the measured recipe's, so both run
the same steps (build, an expert per category, merge, evaluation, an attack per category, red-team evaluation).

    python benchmarks/workflow_steps.py --recipe workflow/recipes/tiny-flux.yaml --out /tmp/workflow-steps
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "workflow" / "recipes" / "tiny.yaml"


def run(recipe: Path, out: Path) -> tuple[dict[str, float], float, float]:
    """``recipe`` cold into ``out``: seconds per step, wall seconds, peak RSS of the run (GiB)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "workflow", str(recipe), "--output_dir", str(out), "--no_progress"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    summary = json.loads((out / "workflow" / "summary.json").read_text())
    return {name: record["seconds"] for name, record in summary.items()}, wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "workflow" / "recipes" / "tiny-flux.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    measured = yaml.safe_load(args.recipe.read_text())
    reference = {**yaml.safe_load(REFERENCE.read_text()), "categories": measured["categories"]}
    reference_recipe = args.out / "tiny-sd15-same-categories.yaml"
    reference_recipe.write_text(yaml.safe_dump(reference, sort_keys=False))
    ours, ours_wall, ours_peak = run(args.recipe, args.out / "measured")
    theirs, theirs_wall, theirs_peak = run(reference_recipe, args.out / "reference")
    print(
        f"\n{args.recipe.name} against tiny.yaml with categories {measured['categories']}, cold, this machine\n"
    )
    print(f"| step | {args.recipe.stem} (s) | tiny SD1.5 (s) | ratio |\n|---|---|---|---|")
    for step, seconds in ours.items():
        other = theirs.get(step)
        ratio = f"{seconds / other:.2f}x" if other else "n/a"
        print(f"| {step} | {seconds:.1f} | {other if other is not None else 'n/a'} | {ratio} |")
    print(f"| whole run (wall) | {ours_wall:.1f} | {theirs_wall:.1f} | {ours_wall / theirs_wall:.2f}x |")
    print(f"\npeak RSS of any child process so far: {ours_peak:.2f} GiB after the first run, "
          f"{theirs_peak:.2f} GiB after both")  # fmt: skip


if __name__ == "__main__":
    main()
