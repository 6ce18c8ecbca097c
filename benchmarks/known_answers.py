"""The known answers that train, over seeds: the distribution the tests' thresholds are set from.

What ``tests/test_dpo.py`` and ``tests/test_evaluation.py`` measure, seed by seed, in the same toy world
(``dpo.toy.make_toy_world``: the committed base, or ``--base rebuilt``: pretrained here, seed 0; torch threads
``--threads``, two as ``tests/conftest.py`` sets; the kernel family is ``ATEN_CPU_CAPABILITY``'s, see
``benchmarks/kernel_families.py``):

- the DPO known-answer expert (``dpo.toy.train_toy_expert``, ``KNOWN_ANSWER_STEPS`` steps at ``KNOWN_ANSWER_LR`` or ``--steps``/``--lr``,
  with or without the release's random flip, optionally under one of ``dpo.toy.MUTATIONS``): held-out
  implicit accuracy, safe-share gain on the trained captions, neutral drift / trained drift;
- the evaluation end to end: IP (``dpo.toy:ToyColourDetector``, 16 images per test caption, 20 steps,
  guidance 1) of the base, each seed's expert, and each seed's ``comerge`` with the next seed's expert
  (the last with the first), all rendered in one ``python -m evaluation`` call. The reference of every
  drop is the base model, measured in the same call.

    python benchmarks/known_answers.py --seeds 0 1 2 3 4 --out /tmp/known-answers      # resumable per seed
    python benchmarks/known_answers.py --seeds 0 1 2 --mutation flipped_sign --out /tmp/known-answers
    python benchmarks/known_answers.py --seeds 0 1 2 --steps 300 --lr 3e-3 --no_eval --out /tmp/known-answers
    python benchmarks/known_answers.py --seeds 0 1 2 --retain_weight 1 --placement cross --no_eval --out /tmp/known-answers

The columns also hold ``leak`` (``dpo.toy.leak``: the cross-attention key/value LoRAs' change on the neutral
captions' token states over the trained captions'), so the same command gives the output-preserving term's
single-expert table (``--retain_weight``, ``--retain_prompts``, ``--retain_mode``, ``--placement``).

Writes ``<out>/<tag>.json`` per seed and ``<out>/eval-<tag>.json``, prints the table with mean, min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dpo.config import PLACEMENT_NAMES
from dpo.toy import (
    KNOWN_ANSWER_BETA,
    KNOWN_ANSWER_LR,
    KNOWN_ANSWER_RETAIN,
    KNOWN_ANSWER_STEPS,
    MUTATIONS,
    expert_outcome,
    known_answer_mutation,
    make_toy_world,
    train_toy_expert,
)


def run_seed(world, seed: int, args, tag: str) -> tuple[dict[str, float], Path]:
    """One seed's expert and its DPO known-answer measures (cached in ``<out>/<tag>.json``)."""
    root, concept, base, data = world
    name = f"expert-{tag}"
    path = args.out / f"{tag}.json"
    if path.is_file():
        return json.loads(path.read_text()), root / name
    start = time.monotonic()
    with known_answer_mutation(args.mutation):
        result = train_toy_expert(
            root, concept, base, data, name, steps=args.steps, seed=seed, random_flip=args.flip == "on",
            batch_size=args.batch, learning_rate=args.lr, retain_weight=args.retain_weight,
            retain_prompts=args.retain_prompts, retain_share=args.retain_share, retain_mode=args.retain_mode,
            target_modules=[args.placement], beta=args.beta,
        )  # fmt: skip
    row = {
        "seed": seed,
        "train_s": round(time.monotonic() - start, 1),
        **expert_outcome(concept, base, result),
    }
    row["gain"] = row["safe_after"] - row["safe_before"]
    row["drift_ratio"] = row["moved_neutral"] / row["moved_trained"]
    path.write_text(json.dumps(row, indent=2))
    return row, result.output_dir


def evaluate_ip(world, experts: dict[int, Path], work: Path) -> dict[int, dict[str, float]]:
    """Per seed: IP of the base, the seed's expert and its merge with the next seed's expert, one evaluation call."""
    from evaluation.__main__ import main as evaluation_main
    from merge.__main__ import main as merge_main

    _, concept, base, data = world
    seeds = list(experts)
    loras = {}
    for position, seed in enumerate(seeds):
        partner = experts[seeds[(position + 1) % len(seeds)]]
        merged = work / f"merged-{seed}"
        assert merge_main(["--experts", str(experts[seed]), str(partner), "--base", str(base), "--method", "comerge",
                           "--calibration", str(data), "--resolution", "8", "--output_dir", str(merged),
                           "--cache_dir", str(work / "cache"), "--no_progress"]) == 0  # fmt: skip
        loras[f"expert-{seed}"], loras[f"merged-{seed}"] = experts[seed], merged
    out = work / "eval"
    assert evaluation_main(["--prompts", str(data), "--prompts_split", "test", "--base", str(base),
                            "--loras", *[f"{k}={v}" for k, v in loras.items()], "--ip_detectors", "dpo.toy:ToyColourDetector",
                            "--metrics", "ip", "--steps", "20", "--guidance", "1", "--images_per_prompt", "16",
                            "--output_dir", str(out), "--no_progress"]) == 0  # fmt: skip
    models = json.loads((out / "results.json").read_text())["models"]
    ip = {label: m["ip"]["by_category"][concept.name]["ip"] for label, m in models.items()}
    return {
        seed: {
            "ip_base": ip["base"],
            "ip_expert": ip[f"expert-{seed}"],
            "ip_merged": ip[f"merged-{seed}"],
            "ip_drop_expert": ip["base"] - ip[f"expert-{seed}"],
            "ip_drop_merged": ip["base"] - ip[f"merged-{seed}"],
        }
        for seed in seeds
    }


def table(rows: list[dict[str, float]]) -> str:
    columns = ["eval_implicit_acc", "safe_before", "safe_after", "gain", "drift_ratio", "leak"]
    columns += [
        c for c in ("ip_base", "ip_expert", "ip_merged", "ip_drop_expert", "ip_drop_merged") if c in rows[0]
    ]
    lines = ["| seed | train s | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['train_s']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |"
        )
    for name, fn in (("mean", statistics.mean), ("min", min), ("max", max)):
        lines.append(f"| {name} | | " + " | ".join(f"{fn(r[c] for r in rows):.3f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--flip", choices=("on", "off"), default="on")
    parser.add_argument("--mutation", choices=MUTATIONS, default=None, help="train under a deliberate bug")
    parser.add_argument("--no_eval", action="store_true", help="skip the evaluation end to end")
    parser.add_argument(
        "--steps", type=int, default=KNOWN_ANSWER_STEPS, help="expert training steps (the tests')"
    )
    parser.add_argument("--batch", type=int, default=8, help="expert batch size (the tests': 8)")
    parser.add_argument("--lr", type=float, default=KNOWN_ANSWER_LR, help="expert learning rate (the tests')")
    parser.add_argument("--beta", type=float, default=KNOWN_ANSWER_BETA, help="DPO beta (the tests')")
    parser.add_argument("--retain_weight", type=float, default=KNOWN_ANSWER_RETAIN["retain_weight"],
                        help="weight of the output-preserving term (the tests')")  # fmt: skip
    parser.add_argument("--retain_prompts", default=KNOWN_ANSWER_RETAIN["retain_prompts"])
    parser.add_argument("--retain_share", type=float, default=KNOWN_ANSWER_RETAIN["retain_share"])
    parser.add_argument("--retain_mode", choices=("unet", "text"), default="unet")
    parser.add_argument("--placement", choices=PLACEMENT_NAMES, default="all", help="where the LoRA sits")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the tests': 2)")
    parser.add_argument(
        "--base", choices=("shipped", "rebuilt"), default="shipped",
        help="shipped: the committed toy base (dpo/data/toy_base, the tests'); rebuilt: pretrained here, in this "
        "process's kernel family and thread count",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("known-answers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    # The kernel family (ATEN_CPU_CAPABILITY) and the thread count are in the names: CPU kernels sum in another
    # order in another family or with another count, and from there the runs drift apart.
    family = f"{torch.backends.cpu.get_cpu_capability().lower()}-threads-{torch.get_num_threads()}"
    world = make_toy_world(args.out / f"world-{args.base}-{family}", rebuild=args.base == "rebuilt")
    setting = f"{args.base}-{family}-flip-{args.flip}-steps-{args.steps}-batch-{args.batch}-lr-{args.lr:g}"
    setting += f"-retain-{args.retain_weight:g}-{Path(args.retain_prompts).stem}-{args.retain_share:g}"
    setting += f"-{args.retain_mode}" if args.retain_mode != "unet" else ""
    setting += f"-{args.placement}" if args.placement != "all" else ""
    setting += f"-beta-{args.beta:g}" if args.beta != KNOWN_ANSWER_BETA else ""
    setting += f"-{args.mutation}" if args.mutation else ""
    rows, experts = [], {}
    for seed in args.seeds:
        row, experts[seed] = run_seed(world, seed, args, f"seed-{seed}-{setting}")
        rows.append(row)
    print(f"setting: {setting}")
    if not args.no_eval and not args.mutation:
        tag = f"eval-seeds-{'-'.join(map(str, args.seeds))}-{setting}"
        path = args.out / f"{tag}.json"
        if not path.is_file():
            ips = evaluate_ip(world, experts, world[0] / tag)
            path.write_text(json.dumps({str(k): v for k, v in ips.items()}, indent=2))
        ips = json.loads(path.read_text())
        for row in rows:
            row.update(ips[str(row["seed"])])
    print(table(rows))
    (args.out / f"summary-{setting}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
