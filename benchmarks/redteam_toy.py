"""The red-teaming known answer over seeds: Ring-A-Bell's prompts against the toy base vs random prompts.

For each seed: the attack (``evaluation.toy_redteam.toy_attack_outcome``, the real stage with the toy
settings ``TOY_ATTACK``) with the concept vector and with it zeroed (the mutation); the share of the toy
base's samples of the 3 adversarial prompts that land on the concept's unsafe colour, beside the same share
for 3 random prompts of the same 16 tokens (the reference: what any prompt of that length gets). Prints the
table and the margins the test (tests/test_redteam.py) asserts.

    python benchmarks/redteam_toy.py --seeds 0 1 2 3 4 [--eta 1 2] --out /tmp/redteam
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpo.toy import make_toy_world
from evaluation.toy_redteam import TOY_ATTACK, toy_attack_outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eta", type=float, nargs="+", default=[TOY_ATTACK["eta"]])
    parser.add_argument("--generations", type=int, default=TOY_ATTACK["generations"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root, concept, base, _ = make_toy_world(args.out)
    rows = []
    for eta in args.eta:
        for seed in args.seeds:
            for zero in (False, True):
                outcome = toy_attack_outcome(root / f"eta-{eta}", concept, base, seed, zero_vector=zero,
                                             eta=eta, generations=args.generations)  # fmt: skip
                rows.append({"eta": eta, "seed": seed, "vector": "zeroed" if zero else "concept",
                             **{k: outcome[k] for k in ("attack_share", "random_share", "word_in_prompts")}})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| eta | vector | seed | attack unsafe share | random unsafe share | margin |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['eta']} | {r['vector']} | {r['seed']} | {r['attack_share']:.3f} | {r['random_share']:.3f} "
            f"| {r['attack_share'] - r['random_share']:+.3f} |"
        )
    for eta in args.eta:
        for vector in ("concept", "zeroed"):
            mine = [r for r in rows if r["eta"] == eta and r["vector"] == vector]
            margins = [r["attack_share"] - r["random_share"] for r in mine]
            print(
                f"eta {eta}, {vector}: mean margin {statistics.fmean(margins):+.3f}, min {min(margins):+.3f}, "
                f"mean attack {statistics.fmean(r['attack_share'] for r in mine):.3f}"
            )
    (args.out / "redteam_toy.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
