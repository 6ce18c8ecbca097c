"""Sharding and stage files: deterministic shards, atomic writes, config guard, manifest sums."""

import json

import pyarrow as pa
import pytest

from coprov2.seeds import derive_seed
from coprov2.sharding import shard_of, shards_for_rank, split_into_shards
from coprov2.stage_io import StageConfigMismatch, StageDir, read_jsonl


def test_shard_of_is_a_fixed_function_of_the_key():
    # Known answers: a change here would silently invalidate every finished shard on disk.
    assert [shard_of(key, 8) for key in ("violence/stabbing", "hate/swastika", "sexual/nudity")] == [1, 1, 0]
    assert derive_seed(0, "unsafe", "violence/stabbing", 0) == 2112381832


def test_adding_an_item_moves_no_other_item():
    keys = [f"c/{i}" for i in range(50)]
    before = split_into_shards(keys, str, 4)
    after = split_into_shards([*keys, "c/new"], str, 4)
    for shard_before, shard_after in zip(before, after, strict=True):
        assert [k for k in shard_after if k != "c/new"] == shard_before


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_partition_the_shards(world):
    owned = [s for rank in range(world) for s in shards_for_rank(7, rank, world)]
    assert sorted(owned) == list(range(7))
    with pytest.raises(ValueError, match="rank 5 is outside a world of 5"):
        shards_for_rank(7, 5, 5)


SCHEMA = pa.schema([("id", pa.string())])


def _write(stage: StageDir, index: int, batches: list[list[str]], stats: dict) -> None:
    writer = stage.writer(index, SCHEMA)
    for ids in batches:
        writer.commit([{"id": i} for i in ids], [{"reason": "empty"}] if "a" in ids else [], stats)
    writer.finish()


def test_stage_writes_whole_shards_and_sums_stats(tmp_path):
    stage = StageDir(tmp_path, "prompts", num_shards=2)
    _write(stage, 0, [["a"]], {"pairs": {"hate": 1}})
    assert stage.pending(range(2)) == [1]
    with pytest.raises(ValueError, match=r"1 shard\(s\) unfinished \(shard-00001-of-00002\); rerun"):
        stage.read_records()
    _write(stage, 1, [["b"], ["c"]], {"pairs": {"hate": 1, "sexual": 1}})
    assert [r["id"] for r in stage.read_records()] == ["a", "b", "c"]
    assert [r["id"] for r in stage.iter_rows(1, 3)] == ["b", "c"]
    assert [r["id"] for r in stage.iter_rows(2)] == ["c"]
    assert read_jsonl(stage.rejected_path(0)) == [{"reason": "empty"}]
    manifest = stage.write_manifest({"seed": 3})
    assert manifest["stats"] == {"pairs": {"hate": 3, "sexual": 2}}
    assert json.loads(stage.manifest_path.read_text()) == manifest
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(tmp_path.rglob("*.parts"))


def test_committed_batches_survive_a_restart_and_the_shard_is_the_same_bytes(tmp_path):
    straight = StageDir(tmp_path / "straight", "images", num_shards=1)
    _write(straight, 0, [["a", "b"], ["c"], ["d"]], {"n": {"x": 1}})
    resumed = StageDir(tmp_path / "resumed", "images", num_shards=1)
    first = resumed.writer(0, SCHEMA)
    first.commit([{"id": "a"}, {"id": "b"}], [{"reason": "empty"}], {"n": {"x": 1}})
    first.commit([{"id": "c"}], [], {"n": {"x": 1}})
    # a new process: the two committed parts are found, the stage skips that many batches
    second = resumed.writer(0, SCHEMA)
    assert second.committed == 2 and not resumed.is_done(0)
    second.commit([{"id": "d"}], [], {"n": {"x": 1}})
    second.finish()
    assert resumed.records_path(0).read_bytes() == straight.records_path(0).read_bytes()
    assert resumed.stats_path(0).read_bytes() == straight.stats_path(0).read_bytes()
    assert resumed.rejected_path(0).read_bytes() == straight.rejected_path(0).read_bytes()


def test_partial_files_of_a_killed_run_are_removed(tmp_path):
    stage = StageDir(tmp_path, "prompts", num_shards=1)
    stage.parts_dir(0).mkdir(parents=True)
    (stage.dir / ".shard-00000-of-00001.parquet.tmp-123").write_text("half a file")
    (stage.parts_dir(0) / ".000001.parquet.tmp-123").write_text("half a part")
    stage.remove_partial_files()
    assert [p.name for p in stage.dir.rglob("*")] == [stage.parts_dir(0).name]


def test_parts_of_a_shard_killed_after_it_was_sealed_are_removed_and_the_shard_kept(tmp_path):
    """A kill between ``finish``'s stats file (the shard is done) and its removal of the parts left them behind: a
    resumed run skipped the shard and kept its parts (seen once in the build's mid-prompts kill test)."""
    stage = StageDir(tmp_path, "prompts", num_shards=2)
    _write(stage, 0, [["a"], ["b"]], {"n": {"x": 1}})
    sealed = stage.records_path(0).read_bytes()
    left = stage.writer(0, SCHEMA)
    left.commit([{"id": "a"}], [], {"n": {"x": 1}})  # the parts as the kill left them
    open_shard = stage.writer(1, SCHEMA)
    open_shard.commit([{"id": "c"}], [], {"n": {"x": 1}})
    stage.remove_partial_files()
    assert (
        not stage.parts_dir(0).exists() and stage.is_done(0) and stage.records_path(0).read_bytes() == sealed
    )
    assert stage.writer(1, SCHEMA).committed == 1, "an unfinished shard keeps its committed parts"


def test_resuming_with_another_config_is_refused(tmp_path):
    stage = StageDir(tmp_path, "prompts", num_shards=1)
    stage.bind_config({"seed": 0, "model": "m"})
    stage.bind_config({"seed": 0, "model": "m"})
    with pytest.raises(StageConfigMismatch, match=r"different config \(changed: seed\)"):
        stage.bind_config({"seed": 1, "model": "m"})


def test_a_changed_finished_shard_is_discarded_with_a_warning_and_made_again(tmp_path, caplog):
    stage = StageDir(tmp_path, "images", num_shards=2)
    _write(stage, 0, [["a"], ["b"]], {"n": {"x": 1}})
    _write(stage, 1, [["c"]], {"n": {"x": 1}})
    stage.write_manifest({})
    assert stage.discard_corrupt_shards() == []
    good = stage.records_path(1).read_bytes()
    stage.records_path(1).write_bytes(good[: len(good) // 2])  # truncated after it was sealed
    assert stage.discard_corrupt_shards() == [1]
    assert "shard-00001-of-00002.parquet is missing or changed" in caplog.text
    assert stage.pending(range(2)) == [1] and not stage.manifest_path.exists()
    _write(stage, 1, [["c"]], {"n": {"x": 1}})
    assert stage.records_path(1).read_bytes() == good


def test_a_folder_lock_names_its_holder_and_is_taken_over_when_the_holder_dies(tmp_path, caplog):
    import logging
    import os
    import signal
    import subprocess
    import sys

    from coprov2.locking import FolderBusy, folder_lock

    folder = tmp_path / "images"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from coprov2.locking import folder_lock\n"
         f"with folder_lock(Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    with (
        pytest.raises(
            FolderBusy, match=rf"images: another run is writing it \(pid {holder.pid} on \S+ since "
        ),
        folder_lock(folder),
    ):
        pass
    os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the OS releases the lock, its owner file stays
    holder.wait()
    with caplog.at_level(logging.INFO, logger="coprov2.locking"), folder_lock(folder):
        assert f"pid {os.getpid()}" in (tmp_path / ".images.lock.owner").read_text().replace(
            '"pid": ', "pid "
        )
    assert f"taking over the lock of a run that ended without releasing it (pid {holder.pid}" in caplog.text
    assert not (tmp_path / ".images.lock.owner").exists(), "released: no owner left"
