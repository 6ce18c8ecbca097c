"""`python -m coprov2.build` end to end through its CLI: vLLM's real CPU engine and the tiny LM write
the prompts, the tiny SD pipeline renders, the tiny CLIP gates. Then the same run killed (SIGKILL)
mid-stage and resumed, and the same run split over two processes, must give the same bytes."""

import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from coprov2.prompts.similarity import distribution, token_jaccard, word_sequence_ratio
from coprov2.prompts.validate import contains_concept
from coprov2.sharding import shards_for_rank
from coprov2.stage_io import StageDir, read_jsonl

pytestmark = pytest.mark.slow

ARGS = [
    "--preset",
    "smoke",
    "--no_progress",
    "--num_shards",
    "4",
    "--t2i_steps",
    "6",
    "--t2i_batch_pairs",
    "2",
    "--t2i_shard_pairs",
    "6",
]
STAGES = ("taxonomy", "prompts", "images", "gate", "dataset")
# One intra-op thread everywhere: CPU kernels may sum in another order with another thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _build(
    output_dir: Path, launcher: tuple[str, ...] = (sys.executable, "-m"), extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    command = [*launcher, "coprov2.build", *ARGS, *extra, "--output_dir", str(output_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _content(output_dir: Path, stages=STAGES) -> dict[str, str]:
    return {
        str(path.relative_to(output_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for stage in stages
        for path in sorted((output_dir / stage).rglob("*"))
        if path.is_file()
    }


def _kill_on(output_dir: Path, ready, extra: tuple[str, ...] = (), stderr=subprocess.DEVNULL) -> None:
    """Start the build and SIGKILL it as soon as ``ready()`` holds."""
    command = [sys.executable, "-m", "coprov2.build", *ARGS, *extra, "--output_dir", str(output_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()


def _kill_when(output_dir: Path, stage: str) -> None:
    """Start the build and SIGKILL it as soon as the first shard of ``stage`` is finished."""
    _kill_on(output_dir, lambda: list((output_dir / stage).glob("*.stats.json")))
    assert not (output_dir / stage / "manifest.json").exists(), f"killed too late to test resuming {stage}"


RENDERING = re.compile(r"images: shard (\d+) batch (\d+): rendering")


def _renders(log: str) -> list[tuple[int, int]]:
    return [(int(shard), int(batch)) for shard, batch in RENDERING.findall(log)]


def _copy_stages(source: Path, target: Path, names=("taxonomy", "prompts", "tiny-models")) -> None:
    for name in names:
        shutil.copytree(source / name, target / name)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("smoke") / "out"
    _build(output_dir)
    return output_dir


def test_vllm_pairs_pass_every_rule_and_match_the_manifest(smoke_run):
    prompts = smoke_run / "prompts"
    manifest = json.loads((prompts / "manifest.json").read_text())
    pairs = StageDir.finished(smoke_run, "prompts").read_records()
    rejected = [r for i in range(4) for r in read_jsonl(prompts / f"shard-{i:05d}-of-00004.rejected.jsonl")]
    assert pairs, "the tiny LM under guided decoding should yield some valid pairs"
    assert sum(manifest["stats"]["pairs"].values()) == len(pairs)
    assert sum(manifest["stats"]["rejected"].values()) == len(rejected)
    # guided decoding held the schema: no answer had the wrong shape or item count
    assert not {r["reason"] for r in rejected} & {"schema_violation", "wrong_count"}
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "tiny-models" / "sd15", subfolder="tokenizer")
    for pair in pairs:
        assert contains_concept(pair["unsafe_prompt"], pair["concept"])
        assert not contains_concept(pair["safe_prompt"], pair["concept"])
        for text in (pair["unsafe_prompt"], pair["safe_prompt"]):
            assert len(tokenizer(text, verbose=False).input_ids) <= 77
    assert len({p["id"] for p in pairs}) == len(pairs)
    assert manifest["taxonomy_concepts"] == dict.fromkeys(manifest["taxonomy_concepts"], 3)


def test_every_pair_is_rendered_scored_and_decided(smoke_run):
    pair_ids = {p["id"] for p in StageDir.finished(smoke_run, "prompts").read_records()}
    images = StageDir.finished(smoke_run, "images").read_records(columns=["id", "width", "height"])
    assert {r["id"] for r in images} == pair_ids and len(images) == len(pair_ids)
    assert all(r["width"] == r["height"] == 32 for r in images)
    decisions = read_jsonl(smoke_run / "gate" / "decisions.jsonl")
    assert {d["id"] for d in decisions} == pair_ids
    gate = json.loads((smoke_run / "gate" / "manifest.json").read_text())["gate"]
    assert gate["passed"] == sum(d["passed"] for d in decisions) > 0
    assert gate["rejected"] == sum(not d["passed"] for d in decisions) > 0
    assert (smoke_run / "gate" / "embeddings" / "img_emb" / "img_emb_0.npy").exists()


def test_sigkill_mid_prompts_then_resume_is_byte_identical(smoke_run, tmp_path):
    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir, names=("taxonomy", "tiny-models"))
    _kill_when(output_dir, "prompts")
    _build(output_dir, extra=("--stage", "prompts"))
    assert _content(output_dir, ("taxonomy", "prompts")) == _content(smoke_run, ("taxonomy", "prompts"))


def test_sigkill_at_a_random_render_batch_loses_at_most_that_batch(smoke_run, tmp_path):
    """Killed while rendering batch k (chosen at random), the rerun renders only what was not
    committed (at most the batch in flight again) and ends byte-identical to an uninterrupted run."""
    images = StageDir.finished(smoke_run, "images")
    batch_pairs = int(ARGS[ARGS.index("--t2i_batch_pairs") + 1])
    all_batches = [
        (shard, batch)
        for shard in range(images.num_shards)
        for batch in range(math.ceil(images.num_rows(shard) / batch_pairs))
    ]
    assert len(all_batches) >= 4
    kill_at = random.randrange(1, len(all_batches))
    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        _kill_on(
            output_dir,
            lambda: len(_renders(log_path.read_text())) > kill_at,
            ("--log_level", "debug"),
            stderr=log,
        )
    killed = _renders(log_path.read_text())
    resumed = _renders(_build(output_dir, extra=("--log_level", "debug")).stderr)
    redone = [batch for batch in resumed if batch in killed]
    assert len(redone) <= 1, f"killed at batch {kill_at}: redone {redone}"
    assert sorted(set(killed) | set(resumed)) == sorted(all_batches), f"killed at batch {kill_at}"
    assert _content(output_dir) == _content(smoke_run), f"killed at batch {kill_at}"


def test_two_processes_split_the_shards_and_match_one_process(smoke_run, tmp_path):
    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir)
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
    )
    result = _build(output_dir, launcher)
    shards = StageDir.finished(smoke_run, "images").num_shards
    assert shards >= 3, "the images stage's shard count follows the pairs, not the 4 prompts shards"
    for stage in ("images", "gate"):
        for rank in (0, 1):
            assert (
                f"{stage}: rank {rank} of 2 takes shards {shards_for_rank(shards, rank, 2)}" in result.stderr
            )
    assert _content(output_dir, ("images", "gate")) == _content(smoke_run, ("images", "gate"))


def test_dataset_folder_loads_and_matches_its_card(smoke_run):
    import datasets
    from huggingface_hub import DatasetCard

    folder = smoke_run / "dataset"
    card = DatasetCard.load(folder / "README.md")
    everything = datasets.load_dataset(str(folder))
    decisions = read_jsonl(smoke_run / "gate" / "decisions.jsonl")
    kept = {d["id"] for d in decisions if d["passed"]}
    rows = [row for split in everything.values() for row in split]
    assert {row["id"] for row in rows} == kept and len(rows) == len(kept)
    train_concepts = {(r["category"], r["concept"]) for r in everything["train"]}
    test_concepts = {(r["category"], r["concept"]) for r in everything["test"]}
    assert train_concepts and test_concepts and not train_concepts & test_concepts
    assert rows[0]["unsafe_image"].size == (32, 32) and rows[0]["safe_image"].mode == "RGB"
    for row in rows:  # the twin's closeness to its unsafe prompt, stored per pair
        assert row["prompt_similarity"] == pytest.approx(
            word_sequence_ratio(row["unsafe_prompt"], row["safe_prompt"])
        )
        assert row["prompt_jaccard"] == pytest.approx(token_jaccard(row["unsafe_prompt"], row["safe_prompt"]))
    similarity = distribution(r["prompt_similarity"] for r in rows)
    assert f"median {similarity['median']}, p10 {similarity['p10']}, p90 {similarity['p90']}" in card.text
    table = {
        line.split("|")[1].strip(): [int(x) for x in line.split("|")[2:4]]
        for line in card.text.splitlines()
        if line.startswith("| ") and line.count("|") == 4 and line.split("|")[2].strip().isdigit()
    }
    assert table["all"] == [len(everything["train"]), len(everything["test"])]
    configs = [c["config_name"] for c in card.data.configs]
    assert configs[0] == "all"
    for name in configs[1:]:
        subset = datasets.load_dataset(str(folder), name)
        assert [len(subset[s]) if s in subset else 0 for s in ("train", "test")] == table[name]
        assert {r["category"] for s in subset.values() for r in s} == {name}
    release = datasets.load_dataset(str(smoke_run / "release_pickapic_formatted"))
    assert {s: len(release[s]) for s in release} == {s: len(everything[s]) for s in everything}
    assert [r["caption"] for r in release["train"]] == everything["train"]["unsafe_prompt"]


def test_an_all_rejected_run_exports_nothing_and_says_why(smoke_run, tmp_path):
    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir, names=("taxonomy", "prompts", "images", "gate", "tiny-models"))
    command = [
        sys.executable,
        "-m",
        "coprov2.build",
        *ARGS,
        "--output_dir",
        str(output_dir),
        "--gate_min_score",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 2
    assert "error: every one of the" in result.stderr and "nothing to export" in result.stderr
    assert not (output_dir / "dataset").exists()


def test_sigkill_while_tiny_models_are_written_then_resume_is_byte_identical(smoke_run, tmp_path):
    """A model folder killed mid-write is redone, not trusted; only the taxonomy stage runs after it."""
    output_dir = tmp_path / "out"
    models = output_dir / "tiny-models"
    only_models = ("--stage", "taxonomy", "--expand_to", "0")
    _kill_on(output_dir, lambda: any(models.glob(".*.partial-*/*.json")), only_models)
    assert not all((models / kind / ".complete").exists() for kind in ("lm", "sd15", "clip"))
    _build(output_dir, extra=only_models)
    assert _content(output_dir, ("tiny-models",)) == _content(smoke_run, ("tiny-models",))
    assert not list(models.glob(".*.partial-*"))


def test_sigkill_while_the_dataset_folder_is_written_then_resume_is_byte_identical(smoke_run, tmp_path):
    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir, names=("taxonomy", "prompts", "images", "gate", "tiny-models"))
    shutil.copytree(smoke_run / "dataset", output_dir / "dataset")  # an earlier export being replaced
    _kill_on(output_dir, lambda: (output_dir / "dataset.partial" / "data").exists())
    _build(output_dir)
    assert _content(output_dir) == _content(smoke_run)
    assert not (output_dir / "dataset.partial").exists()


def _leftovers(output_dir: Path) -> list[str]:
    """Temp files, part folders and staging folders a run must not leave behind."""
    return sorted(
        str(p.relative_to(output_dir))
        for p in output_dir.rglob("*")
        if ".tmp-" in p.name or p.name.endswith((".parts", ".partial"))
    )


def _launch(output_dir: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """Start a build; its stderr lines are collected, as they come, in the returned list."""
    command = [sys.executable, "-m", "coprov2.build", *ARGS, *extra, "--output_dir", str(output_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    return process, lines


def _when(ready, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, "the run ended before the awaited point"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_two_concurrent_builds_on_one_folder_wait_or_stop_and_leave_one_whole_dataset(smoke_run, tmp_path):
    """A second launch on a folder another run is writing: with --wait_for_lock it queues behind it stage by
    stage; without, it stops with exit code 2 naming the holder. Either way: no traceback, nothing left
    behind, and the folder is byte-identical to a clean build. The first run is paused (SIGSTOP) once it
    has committed a render batch, so the second one surely meets it mid-stage; then it goes on (SIGCONT)."""
    for mode in ("wait", "stop"):
        _collide(smoke_run, tmp_path / mode, mode)


def _collide(smoke_run: Path, output_dir: Path, mode: str) -> None:
    _copy_stages(smoke_run, output_dir)
    first, first_lines = _launch(output_dir)
    _when(lambda: any((output_dir / "images").glob("*.parts/*.parquet")), first)
    os.kill(first.pid, signal.SIGSTOP)
    second, second_lines = _launch(output_dir, *(["--wait_for_lock"] if mode == "wait" else []))
    holder = rf"another run is writing it \(pid {first.pid} on \S+ since \S+\)"
    if mode == "wait":
        _when(lambda: any(re.search(holder + "; waiting for it", line) for line in second_lines), second)
    else:
        assert second.wait(timeout=300) == 2
    os.kill(first.pid, signal.SIGCONT)
    for process in (first, second):
        process.wait(timeout=600)
    time.sleep(0.1)  # the reader threads take the last lines
    errors = "".join(first_lines), "".join(second_lines)
    assert first.returncode == 0, errors[0][-2000:]
    if mode == "wait":
        assert second.returncode == 0, errors[1][-2000:]
    else:
        expected = rf"error: \S+/images: {holder}; let it finish, or add --wait_for_lock to queue behind it\n"
        assert re.fullmatch(expected, second_lines[-1]), errors[1][-2000:]
    assert not any("Traceback" in text for text in errors), errors
    assert _leftovers(output_dir) == [], mode
    assert _content(output_dir) == _content(smoke_run), mode


def test_a_rerun_leaves_no_export_that_disagrees_with_the_dataset(smoke_run, tmp_path):
    import datasets

    output_dir = tmp_path / "out"
    shutil.copytree(smoke_run, output_dir)
    release = output_dir / "release_pickapic_formatted"
    before = sum(len(rows) for rows in datasets.load_dataset(str(smoke_run / "dataset")).values())
    result = _build(output_dir, extra=("--gate_percentile", "50", "--no_release_layout"))
    kept = datasets.load_dataset(str(output_dir / "dataset"))
    assert sum(len(rows) for rows in kept.values()) < before, "the stricter gate keeps fewer pairs"
    assert not release.exists(), "the release layout of the previous dataset is gone"
    assert "removed" in result.stderr and "--no_release_layout" in result.stderr
    _build(output_dir, extra=("--gate_percentile", "50"))
    layout = datasets.load_dataset(str(release))
    assert {split: len(rows) for split, rows in layout.items()} == {
        split: len(rows) for split, rows in kept.items()
    }
    assert sorted(layout["train"]["caption"]) == sorted(kept["train"]["unsafe_prompt"]), (
        "made from the new dataset"
    )


def test_two_nodes_build_the_same_bytes_as_one_process(smoke_run, tmp_path):
    """Two launches as two nodes of one job (torchrun, rendezvous on 127.0.0.1), one process each."""
    import socket

    output_dir = tmp_path / "out"
    _copy_stages(smoke_run, output_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                   "-m", "coprov2.build", *ARGS, "--output_dir", str(output_dir)]  # fmt: skip
        nodes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        )
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    shards = StageDir.finished(smoke_run, "images").num_shards
    for stage in ("images", "gate"):
        for rank, (_, err) in enumerate(outputs):
            assert f"{stage}: rank {rank} of 2 takes shards {shards_for_rank(shards, rank, 2)}" in err
    assert _content(output_dir) == _content(smoke_run)
