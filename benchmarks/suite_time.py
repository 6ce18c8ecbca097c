"""The test suite's wall time: the README's command against the same suite in one process, back to back.

- ``workers``: ``python -m pytest -q``, the README's command: two pytest-xdist workers (pyproject's addopts),
  one CPU thread each, every test module whole on one worker (``tests/conftest.py``).
- ``one-process``: ``python -m pytest -q -n 0``: the same tests in one process at two torch threads, as the
  suite ran before the workers.

Both are run from the repository root on the same machine, ``--repeats`` times, alternated; the seconds are
pytest's own ("N passed in S s"), the ratio is ``workers / one-process`` per repeat. Nothing else should run
on the machine meanwhile (two cores: the workers use both).

    python benchmarks/suite_time.py [--repeats 1] [--order workers one-process]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "workers": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
    "one-process": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"],
}
SUMMARY = re.compile(r"\d+ passed.* in ([\d.]+)s")


def run(name: str) -> tuple[float, str]:
    """Seconds pytest reports for one run, and its summary line; a failed run stops the benchmark."""
    result = subprocess.run(COMMANDS[name], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if SUMMARY.search(line)]
    if result.returncode != 0 or not lines:
        sys.exit(f"{name}: exit {result.returncode}\n{result.stdout[-3000:]}")
    return float(SUMMARY.search(lines[-1]).group(1)), lines[-1].strip("= ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--order", nargs=2, choices=list(COMMANDS), default=["workers", "one-process"])
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        seconds = {}
        for name in args.order:
            seconds[name], summary = run(name)
            print(f"repeat {repeat}: {name}: {summary}", flush=True)
        rows.append(seconds)
    print("\n| repeat | workers (s) | one process (s) | workers / one process |\n|---|---|---|---|")
    for repeat, s in enumerate(rows):
        print(
            f"| {repeat} | {s['workers']:.1f} | {s['one-process']:.1f} | {s['workers'] / s['one-process']:.2f} |"
        )


if __name__ == "__main__":
    main()
