"""The trained known answers in every CPU kernel family this machine can run, at 1 and 2 threads.

PyTorch picks its CPU kernels by the CPU's instruction set (``default``, ``avx2``, ``avx512``), and
``ATEN_CPU_CAPABILITY`` forces a lower one. The kernels sum in another order per family and thread count,
so a toy base pretrained and an expert trained on another machine are other weights: a known answer from
training is a distribution over seeds *and* machines. This runs ``benchmarks/known_answers.py`` (seeds,
DPO known answer, the evaluation's IP drops) once per (family, threads, base), each in its own process
with ``ATEN_CPU_CAPABILITY`` set, on

- ``shipped``: the committed toy base (``dpo.toy.SHIPPED_TOY_BASE``), what the tests train from;
- ``rebuilt``: a base pretrained in that family and thread count (what ``python -m dpo.toy`` writes there),

and prints one table: per (base, family, threads, seed) the base's safe share, gain, drift ratio, leak, the
IP drops, then the mean per setting and the tests' claims with their margin (the worst setting named)::

    python benchmarks/kernel_families.py --out /tmp/families                          # the tests' expert
    python benchmarks/kernel_families.py --out /tmp/families --retain_weight 100      # with the preserving term

``--families`` defaults to ``default avx2`` plus ``avx512`` where ``/proc/cpuinfo`` lists ``avx512f``.
Resumable: every (setting, seed) is kept under ``--out``. Writes ``<out>/families-<tag>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: The tests' claims on the mean over seeds (tests/test_dpo.py ``dpo_known_answer_claim``, tests/test_evaluation.py):
#: column -> (bound, ">=" or "<").
CLAIMS = {
    "gain": (0.2, ">="),
    "drift_ratio": (0.35, "<"),
    "eval_implicit_acc": (0.9, ">="),
    "ip_drop_expert": (0.1, ">="),
    "ip_drop_merged": (0.1, ">="),
}
COLUMNS = [
    "safe_before",
    "gain",
    "drift_ratio",
    "leak",
    "eval_implicit_acc",
    "ip_drop_expert",
    "ip_drop_merged",
]


def families() -> list[str]:
    found = ["default", "avx2"]
    if "avx512f" in Path("/proc/cpuinfo").read_text():
        found.append("avx512")
    return found


def margin(value: float, bound: float, sense: str) -> float:
    """How far ``value`` is on the right side of ``bound`` (negative: the claim fails)."""
    return value - bound if sense == ">=" else bound - value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=families())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bases", nargs="+", choices=("shipped", "rebuilt"), default=["shipped", "rebuilt"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("kernel-families"))
    args, passed = parser.parse_known_args()  # the rest goes to known_answers.py (--retain_weight, ...)
    script = Path(__file__).with_name("known_answers.py")
    settings = []
    for base in args.bases:
        for family in args.families:
            for threads in args.threads:
                command = [sys.executable, str(script), "--seeds", *map(str, args.seeds), "--threads", str(threads),
                           "--base", base, "--out", str(args.out), *passed]  # fmt: skip
                env = {**os.environ, "ATEN_CPU_CAPABILITY": family, "OMP_NUM_THREADS": str(threads)}
                result = subprocess.run(command, env=env, capture_output=True, text=True)
                if result.returncode:
                    sys.exit(
                        f"{family} x {threads} threads x {base}: known_answers.py failed\n{result.stderr[-4000:]}"
                    )
                setting = next(line for line in result.stdout.splitlines() if line.startswith("setting: "))[
                    9:
                ]
                settings.append(
                    (base, family, threads, json.loads((args.out / f"summary-{setting}.json").read_text()))
                )
    lines = [
        "| base | family | threads | seed | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    means = []
    for base, family, threads, rows in settings:
        for row in rows:
            lines.append(
                f"| {base} | {family} | {threads} | {row['seed']} | "
                + " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
                + " |"
            )
        mean = {c: statistics.fmean(r[c] for r in rows) for c in COLUMNS}
        means.append((base, family, threads, mean))
        lines.append(
            f"| {base} | {family} | {threads} | **mean** | "
            + " | ".join(f"**{mean[c]:.3f}**" for c in COLUMNS)
            + " |"
        )
    lines += ["", "| base | claim (mean over seeds) | worst setting | its mean | margin | holds in every setting |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for base in args.bases:
        mine = [m for m in means if m[0] == base]
        for column, (bound, sense) in CLAIMS.items():
            worst = min(mine, key=lambda m: margin(m[3][column], bound, sense))
            left = margin(worst[3][column], bound, sense)
            holds = left > 0 or (sense == ">=" and left == 0)
            lines.append(f"| {base} | {column} {sense} {bound} | {worst[1]}, {worst[2]} threads | {worst[3][column]:.3f} | "
                         f"{left:+.3f} | {'yes' if holds else '**no**'} |")  # fmt: skip
    report = "\n".join(lines)
    print(report)
    tag = "-".join(passed).replace("/", "_").replace("--", "") or "tests"
    (args.out / f"families-{tag}.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
