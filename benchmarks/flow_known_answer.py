"""The flow known answer (Flow-DPO on the tiny FLUX toy base) per CPU kernel family and thread count.

Each (family, threads) runs in its own process with ``ATEN_CPU_CAPABILITY`` set and trains the known-answer
experts (``dpo.toy.train_known_answer_experts``, seeds 0-2, the tests' settings) from

- ``shipped``: the committed base (``dpo.toy.SHIPPED_FLUX_TOY_BASE``), what the tests train from;
- ``rebuilt``: a base pretrained in that family and thread count (``python -m dpo.toy DIR --tiny flux``);

optionally under a deliberate bug (``--mutation flipped_sign``: winner and loser swapped in the loss). Prints
per (base, family, threads, seed) the base's safe share, gain and drift ratio, the means, and the tests' claims
(``tests/test_dpo.py`` ``dpo_known_answer_claim``: gain >= 0.2, drift ratio < 0.35, accuracy >= 0.9) with their
margins::

    python benchmarks/flow_known_answer.py --out /tmp/flow-ka
    python benchmarks/flow_known_answer.py --out /tmp/flow-ka --mutation flipped_sign --families avx2 --threads 2

Resumable: each setting's outcomes are kept as ``<out>/<base>-<family>-<threads>[-<mutation>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_setting(out: Path, base: str, threads: int, family: str, mutation: str | None) -> None:
    """In this process (its ``ATEN_CPU_CAPABILITY`` already set): the experts of every seed and their outcomes."""
    import torch

    from dpo.toy import expert_outcome, known_answer_mutation, make_toy_world, train_known_answer_experts

    torch.set_num_threads(threads)
    assert torch.backends.cpu.get_cpu_capability().lower() == family, "ATEN_CPU_CAPABILITY was not taken"
    tag = f"{base}-{family}-{threads}" + (f"-{mutation}" if mutation else "")
    world = make_toy_world(out / f"world-{tag}", rebuild=base == "rebuilt", tiny="flux")
    with known_answer_mutation(mutation):
        experts = train_known_answer_experts(world)
    outcomes = [expert_outcome(world[1], world[2], expert) for expert in experts]
    (out / f"{tag}.json").write_text(json.dumps(outcomes, indent=2))


def summary(outcomes: list[dict[str, float]]) -> dict[str, float]:
    gains = [o["safe_after"] - o["safe_before"] for o in outcomes]
    ratios = [o["moved_neutral"] / o["moved_trained"] for o in outcomes]
    return {
        "gains": gains,
        "ratios": ratios,
        "gain": statistics.mean(gains),
        "drift_ratio": statistics.mean(ratios),
        "acc": statistics.mean(o["eval_implicit_acc"] for o in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("flow-known-answer"))
    parser.add_argument("--families", nargs="+", default=["default", "avx2"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bases", nargs="+", choices=("shipped", "rebuilt"), default=["shipped"])
    parser.add_argument("--mutation", choices=("flipped_sign", "reference_not_frozen"), default=None)
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args._one:
        run_setting(args.out, args._one[0], int(args._one[1]), args._one[2], args.mutation)
        return
    rows = []
    for base in args.bases:
        for family in args.families:
            for threads in args.threads:
                tag = f"{base}-{family}-{threads}" + (f"-{args.mutation}" if args.mutation else "")
                path = args.out / f"{tag}.json"
                if not path.exists():
                    command = [
                        sys.executable,
                        __file__,
                        "--out",
                        str(args.out),
                        "--_one",
                        base,
                        str(threads),
                        family,
                    ]
                    command += ["--mutation", args.mutation] if args.mutation else []
                    subprocess.run(command, check=True, env={**os.environ, "ATEN_CPU_CAPABILITY": family})
                outcomes = json.loads(path.read_text())
                rows.append((tag, outcomes, summary(outcomes)))
    print("| setting | seed | safe before | gain | drift ratio | held-out acc |\n|---|---|---|---|---|---|")
    for tag, outcomes, s in rows:
        for seed, (o, gain, ratio) in enumerate(zip(outcomes, s["gains"], s["ratios"], strict=True)):
            print(
                f"| {tag} | {seed} | {o['safe_before']:.3f} | {gain:+.3f} | {ratio:.3f} | {o['eval_implicit_acc']:.3f} |"
            )
        print(f"| {tag} | **mean** | | **{s['gain']:+.3f}** | **{s['drift_ratio']:.3f}** | {s['acc']:.3f} |")
    worst_gain = min(s["gain"] for _, _, s in rows)
    worst_ratio = max(s["drift_ratio"] for _, _, s in rows)
    print(
        f"\nclaims: gain >= 0.2 (worst mean {worst_gain:+.3f}, margin {worst_gain - 0.2:+.3f}); "
        f"drift ratio < 0.35 (worst mean {worst_ratio:.3f}, margin {0.35 - worst_ratio:+.3f})"
    )


if __name__ == "__main__":
    main()
