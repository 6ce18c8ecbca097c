"""Bad inputs, tried as a new user would, against this tree and a reference checkout (an earlier commit):
for each case, the exit code, the last line the CLI printed (``traceback`` when it was one) and the seconds to it.

Ids that cannot be opened are tried as this machine meets them (no network: the Hub's name does not resolve),
and with ``HF_HUB_OFFLINE=1``.

    git worktree add /tmp/ref 9e2aee1
    python benchmarks/bad_inputs.py --reference /tmp/ref --work /tmp/bad-inputs

Both trees run with the same interpreter and packages; ``PYTHONPATH`` puts the tree's packages first.
Cases that need a finished build copy one made once per tree (smoke preset, up to the gate). The
sandbox runs as root, so a read-only output folder cannot be tried here (root writes anyway).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SMOKE = ["--preset", "smoke", "--no_progress"]


def _run(tree: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", **(env or {})}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=tree, env=environment, timeout=900
    )
    seconds = time.monotonic() - start
    lines = [line for line in result.stderr.splitlines() if line.strip() and "torchvision" not in line]
    traceback = any(line.startswith("Traceback") for line in lines)
    last = lines[-1] if lines else result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return result.returncode, ("traceback: " if traceback else "") + last[:200], seconds


def _cases(work: Path, finished: Path) -> list[tuple[str, list[str], dict[str, str] | None, callable]]:
    """(name, argv, extra env, preparation run on the case folder first)."""

    def copy(stages=("taxonomy", "prompts", "images", "gate", "tiny-models")):
        def prepare(folder: Path) -> None:
            for name in stages:
                shutil.copytree(finished / name, folder / name)

        return prepare

    def truncate(pattern: str):
        def prepare(folder: Path) -> None:
            copy()(folder)
            path = sorted(folder.glob(pattern))[0]
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

        return prepare

    def nothing(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

    def half_written_lm(folder: Path) -> None:
        (folder / "tiny-models" / "clip").mkdir(parents=True)
        (folder / "tiny-models" / "clip" / "config.json").write_bytes(b"")

    def duplicate_key(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "concepts.yaml").write_text(
            "categories:\n  hate:\n    description: d\n    concepts: [a]\n"
            "  hate:\n    description: e\n    concepts: [b]\n"
        )

    def yaml_list(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.yaml").write_text("seed: [1, 2]\n")

    def empty_release_csv(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "CoProv2_train.csv").write_text("prompt,image,category\n")

    def one_pair_release(folder: Path) -> None:
        from PIL import Image

        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "CoProv2_train.csv").write_text("prompt,image,category\na scene,0000000_0.jpg,Violence\n")
        for prefix, color in (("u_idx_", "red"), ("s_idx_", "blue")):
            Image.new("RGB", (32, 32), color).save(folder / "images" / f"{prefix}0000000_0.jpg")

    def a_file(folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")

    def prompts_csv(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "p.csv").write_text("prompt,categories\na lantern scene,violence\n")
        (folder / "pairs.csv").write_text("prompt,prompt1\na red lantern scene,a lantern scene\n")

    def toy_dataset(folder: Path) -> None:
        from dpo.toy import toy_concepts, write_toy_dataset

        write_toy_dataset(folder, toy_concepts(1, captions=2, held_out=1), pairs_per_caption=1)

    def recipe(text: str):
        """A recipe on a toy CoProV2 dataset written in the case folder (so only the bad option is bad)."""

        def prepare(folder: Path) -> None:
            toy_dataset(folder)
            (folder / "recipe.yaml").write_text(
                text.replace("{dir}", str(folder)) + "categories: [concept-0]\n"
            )

        return prepare

    def look_alike(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "concepts.yaml").write_text(
            "categories:\n  hate:\n    description: d\n    concepts: [mob]\n"
            "  violence:\n    description: d\n    concepts: [riot, m\u043eb]\n"
        )

    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    evaluation = ["-m", "evaluation", "--output_dir", "{dir}/eval", "--cache_dir", "{dir}/cache",
                  "--clip_model", "tiny:clip", "--ip_detectors", "nudenet", "--no_progress"]  # fmt: skip
    build = ["-m", "coprov2.build", *SMOKE]
    only_taxonomy = [*build, "--stage", "taxonomy", "--expand_to", "0"]
    return [
        ("1 half-written tiny CLIP, then the gate", [*build, "--stage", "gate"], None,
         lambda f: (copy(("taxonomy", "prompts", "images"))(f), half_written_lm(f))),
        ("2 --gate_min_score nan", [*only_taxonomy, "--gate_min_score", "nan"], None, nothing),
        ("2 --t2i_guidance nan", [*only_taxonomy, "--t2i_guidance", "nan"], None, nothing),
        ("3 resume images with --t2i_batch_pairs 1", [*build, "--stage", "images", "--t2i_batch_pairs", "1"],
         None, copy()),
        ("5 duplicated category key", [*only_taxonomy, "--concepts", "{dir}/concepts.yaml"], None, duplicate_key),
        ("truncated images shard, then the gate", [*build, "--stage", "gate"], None,
         truncate("images/shard-00000-*.parquet")),
        ("--t2i_steps 0", [*build, "--stage", "images", "--t2i_steps", "0"], None,
         copy(("taxonomy", "prompts", "tiny-models"))),
        ("--clip_batch_size 0", [*build, "--stage", "gate", "--clip_batch_size", "0"], None,
         copy(("taxonomy", "prompts", "images", "tiny-models"))),
        ("dpo --learning_rate -1", ["-m", "dpo.train", "--dataset", "{dir}", "--learning_rate=-1",
         "--base", "tiny:sd15", "--output_dir", "{dir}/expert", "--cache_dir", "{dir}/cache",
         "--max_train_steps", "1", "--train_batch_size", "1", "--gradient_accumulation_steps", "1"], None,
         one_pair_release),
        ("dpo on an empty split", ["-m", "dpo.train", "--dataset", "{dir}", "--base", "tiny:sd15",
         "--output_dir", "{dir}/expert", "--cache_dir", "{dir}/cache"], None, empty_release_csv),
        ("merge: a missing expert", ["-m", "merge", "--experts", "experts/not-here", "--method", "linear",
         "--output_dir", "{dir}/merged"], None, nothing),
        ("output dir is a file", [*only_taxonomy, "--output_dir", "{dir}"], None, a_file),
        ("missing model folder", [*only_taxonomy, "--t2i_model", "./no-such-model"], None, nothing),
        ("a list value in --config", [*only_taxonomy, "--config", "{dir}/run.yaml"], None, yaml_list),
        ("--push_to_hub while offline", [*build, "--push_to_hub", "me/coprov2"], {"HF_HUB_OFFLINE": "1"},
         copy()),
        ("--llm_top_p 0", [*only_taxonomy, "--llm_top_p", "0"], None, nothing),
        ("--gate_percentile 150", [*only_taxonomy, "--gate_percentile", "150"], None, nothing),
        ("--test_ratio 1", [*only_taxonomy, "--test_ratio", "1"], None, nothing),
        ("--max_shard_size lots", [*only_taxonomy, "--max_shard_size", "lots"], None, nothing),
        ("--concepts missing.yaml", [*only_taxonomy, "--concepts", "missing.yaml"], None, nothing),
        ("--llm_backend openai without --llm_base_url", [*build, "--stage", "prompts", "--expand_to", "0",
         "--llm_backend", "openai"], None, nothing),
        ("dpo: a --dataset that is neither a folder nor reachable", ["-m", "dpo.train", "--dataset",
         "someone/no-such-dataset", "--base", "tiny:sd15", "--output_dir", "{dir}/expert"],
         {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, nothing),
        ("merge --density 0", ["-m", "merge", "--experts", "a", "--method", "ties", "--density", "0",
         "--output_dir", "{dir}/merged"], None, nothing),
        ("dpo --resolution nan", ["-m", "dpo.train", "--dataset", "{dir}", "--resolution", "nan",
         "--output_dir", "{dir}/expert"], None, empty_release_csv),
        ("from_release: images path missing", ["-m", "coprov2.dataset.from_release", "{dir}/CoProv2_train.csv",
         "{dir}/nowhere.zip", "{dir}/out"], None, empty_release_csv),
        ("#37.4 evaluation --base tiny:flux --height 30", [*evaluation, "--prompts", "{dir}/p.csv", "--base",
         "tiny:flux", "--height", "30"], None, prompts_csv),
        ("#37.4 dpo.train --base tiny:flux --resolution 34", ["-m", "dpo.train", "--dataset", "{dir}", "--category",
         "concept-0", "--base", "tiny:flux", "--resolution", "34", "--output_dir", "{dir}/expert", "--cache_dir",
         "{dir}/cache"], None, toy_dataset),
        ("#37.4 build --t2i_model tiny:flux --t2i_width 34", [*build, "--t2i_model", "tiny:flux", "--t2i_width",
         "34"], None, nothing),
        ("#37.4 recipe: FLUX base, dpo.target_modules attn2.to_k", ["-m", "workflow", "{dir}/recipe.yaml",
         "--output_dir", "{dir}/run", "--no_progress"], None,
         recipe("base: tiny:flux\ndataset: {dir}\ndpo: {target_modules: [attn2.to_k, attn2.to_v]}\n"
                "evaluation: {clip_model: tiny:clip, ip_detectors: [nudenet]}\n")),
        ("#37.4 recipe: FLUX base, evaluation.height 30", ["-m", "workflow", "{dir}/recipe.yaml", "--output_dir",
         "{dir}/run", "--no_progress"], None, recipe("base: tiny:flux\ndataset: {dir}\ndpo: {max_train_steps: 2, resolution: 32}\n"
                "evaluation: {height: 30, clip_model: tiny:clip, ip_detectors: [nudenet]}\n")),
        ("#37.5 evaluation --base <missing id>", [*evaluation, "--prompts", "{dir}/p.csv", "--base",
         "nobody/no-such-model"], None, prompts_csv),
        ("#37.5 evaluation --base <missing id>, offline", [*evaluation, "--prompts", "{dir}/p.csv", "--base",
         "nobody/no-such-model"], offline, prompts_csv),
        ("#37.5 evaluation --prompts <unreachable Hub dataset>", [*evaluation, "--prompts",
         "nobody/no-such-prompts", "--base", "tiny:sd15"], None, prompts_csv),
        ("#37.5 evaluation --prompts ringabell-nudity (gated)", [*evaluation, "--prompts", "ringabell-nudity",
         "--base", "tiny:sd15"], None, prompts_csv),
        ("#37.5 build --t2i_model <missing id>", [*build, "--t2i_model", "nobody/no-such-model"], None, nothing),
        ("#37.5 evaluation.attack --base <missing id>", ["-m", "evaluation.attack", "--base",
         "nobody/no-such-model", "--pairs", "{dir}/pairs.csv", "--category", "violence", "--output_dir",
         "{dir}/attack"], None, prompts_csv),
        ("#37.5 dpo.train --dataset <missing id>", ["-m", "dpo.train", "--dataset", "nobody/no-such-dataset",
         "--base", "tiny:sd15", "--output_dir", "{dir}/expert"], None, nothing),
        ("#37.5 recipe: base <missing id>", ["-m", "workflow", "{dir}/recipe.yaml", "--output_dir", "{dir}/run",
         "--no_progress"], None, recipe("base: nobody/no-such-model\ndataset: {dir}\n")),
        ("#37.6 look-alike concepts (Cyrillic o)", [*only_taxonomy, "--concepts", "{dir}/concepts.yaml"], None,
         look_alike),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, required=True, help="checkout of the earlier commit")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    parser.add_argument(
        "--only", nargs="*", default=[], help="run only the cases whose name contains one of these"
    )
    args = parser.parse_args()
    trees = {"before": args.reference.resolve(), "after": Path(__file__).resolve().parent.parent}
    rows: dict[str, dict[str, tuple[int, str]]] = {}
    for label, tree in trees.items():
        finished = args.work / label / "finished"
        if not (finished / "gate" / "manifest.json").exists():
            code, last, _ = _run(
                tree, ["-m", "coprov2.build", *SMOKE, "--stage", "gate", "--output_dir", str(finished)]
            )
            assert code == 0, last
        for index, (name, argv, env, prepare) in enumerate(_cases(args.work, finished)):
            if args.only and not any(part in name for part in args.only):
                continue
            folder = args.work / label / f"case-{index:02d}"
            shutil.rmtree(folder, ignore_errors=True)
            prepare(folder)
            argv = [a.replace("{dir}", str(folder)) for a in argv]
            if "--output_dir" not in argv and argv[1] == "coprov2.build":
                argv += ["--output_dir", str(folder)]
            rows.setdefault(name, {})[label] = _run(tree, argv, env)
            print(f"{label:6s} | {name} | {rows[name][label]}", flush=True)
    print("\n| case | before: exit, s, last line | after: exit, s, last line |\n|---|---|---|")
    for name, results in rows.items():
        cells = [
            f"{results[k][0]}, {results[k][2]:.1f} s, `{results[k][1].replace('|', '/')}`"
            for k in ("before", "after")
        ]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
