"""On-disk stage results: parquet shards written part by part, a config guard and the manifest.

A stage's shard ``i`` is ``<shard>.parquet`` (its rows, one row group per committed part),
``<shard>.rejected.jsonl`` (items rejected with their reasons) and ``<shard>.stats.json`` (counts),
the stats file written last as the "finished" marker. While a shard is being made, each committed
batch of rows is one atomic file ``<shard>.parts/<k>.parquet`` carrying its rejections and stats in
its metadata; a killed run loses at most the batch in flight, and the rerun resumes after the last
committed part. Finishing a shard streams the parts into the final file (one part in memory at a
time), so an interrupted run and an uninterrupted one write the same bytes. Files hold no
timestamps: a rerun with the same config and seed writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from coprov2.errors import UserError
from coprov2.sharding import shard_name

logger = logging.getLogger(__name__)

#: Keys of a part file's schema metadata: its rejected items and stats; the state it carries on.
_PART_META = b"alignguard_part"
_PART_STATE = b"alignguard_state"


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write through a temporary file and ``os.replace``: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps(record) + "\n" for record in records))


def staging_folder(target: Path) -> Path:
    """An empty ``<target>.partial`` beside ``target``, for :func:`swap_in`."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``staging`` folder, so a killed writer leaves the old one or none."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (shards can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_stats(total: dict[str, Counter], stats: Mapping[str, Mapping[str, int]]) -> None:
    """Add nested counts ``{key: {label: n}}`` into ``total``."""
    for key, counts in stats.items():
        total.setdefault(key, Counter()).update(counts)


def sorted_stats(total: Mapping[str, Counter]) -> dict[str, dict[str, int]]:
    return {key: dict(sorted(counter.items())) for key, counter in sorted(total.items())}


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one shorter): batch borders depend only on positions."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class ShardResult:
    """What one batch of work produced: rows, rejected items with reasons, nested counts."""

    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    stats: dict[str, Any]


class StageConfigMismatch(UserError):
    """The output folder holds a stage run with another config: resuming would mix two runs."""


class ShardWriter:
    """Writes one shard batch by batch: ``commit`` makes a batch durable, ``finish`` seals the shard."""

    def __init__(self, stage: StageDir, index: int, schema: pa.Schema) -> None:
        self.stage, self.index, self.schema = stage, index, schema
        self.parts_dir = stage.parts_dir(index)
        #: Parts committed by earlier (killed) runs: the stage skips that many input batches.
        self.committed = self._count_parts()
        #: The ``state`` the last committed part carried (None if none): what a stage whose batches are
        #: not independent (a random generator walked across rows) needs to carry on where it stopped.
        self.state = (
            pq.read_schema(self._part_path(self.committed - 1)).metadata.get(_PART_STATE)
            if self.committed
            else None
        )

    def _part_path(self, part: int) -> Path:
        return self.parts_dir / f"{part:06d}.parquet"

    def _count_parts(self) -> int:
        count = 0
        while self._part_path(count).exists():
            count += 1
        return count

    def commit(
        self,
        rows: Sequence[Mapping[str, Any]],
        rejected: Sequence[Mapping[str, Any]] = (),
        stats: Mapping[str, Mapping[str, int]] | None = None,
        state: bytes | None = None,
    ) -> None:
        """Write one batch's rows, rejections, stats and (optional) carried ``state`` as the next part, atomically."""
        meta = {_PART_META: dumps({"rejected": list(rejected), "stats": stats or {}}).encode()}
        if state is not None:
            meta[_PART_STATE] = state
        table = pa.Table.from_pylist(list(rows), schema=self.schema).replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(self._part_path(self.committed), sink.getvalue().to_pybytes())
        self.committed += 1
        self.state = state

    def commit_result(self, result: ShardResult) -> None:
        self.commit(result.records, result.rejected, result.stats)

    def finish(self) -> None:
        """Stream the parts into the shard's files (stats last), then drop the parts."""
        totals: dict[str, Counter] = {}
        tmp = self.stage.records_path(self.index).with_name(
            f".{self.stage.records_path(self.index).name}.tmp-{os.getpid()}"
        )
        rejected_lines: list[str] = []
        with pq.ParquetWriter(tmp, self.schema) as writer:
            for part in range(self.committed):
                table = pq.read_table(self._part_path(part))
                meta = json.loads(table.schema.metadata[_PART_META])
                rejected_lines += [dumps(record) + "\n" for record in meta["rejected"]]
                add_stats(totals, meta["stats"])
                writer.write_table(table.replace_schema_metadata(None).cast(self.schema))
        os.replace(tmp, self.stage.records_path(self.index))
        atomic_write_text(
            self.stage.sha256_path(self.index), file_sha256(self.stage.records_path(self.index)) + "\n"
        )
        atomic_write_text(self.stage.rejected_path(self.index), "".join(rejected_lines))
        atomic_write_text(self.stage.stats_path(self.index), dumps(sorted_stats(totals)) + "\n")
        shutil.rmtree(self.parts_dir, ignore_errors=True)


class StageDir:
    """One stage's folder: ``config.json``, shard files and, once complete, ``manifest.json``."""

    def __init__(self, root: Path, name: str, num_shards: int) -> None:
        self.name = name
        self.dir = Path(root) / name
        self.num_shards = num_shards

    @classmethod
    def finished(cls, root: Path, name: str) -> StageDir:
        """The folder of finished stage ``name`` under ``root`` (its manifest gives the shard count)."""
        stage = cls(root, name, num_shards=1)
        return cls(root, name, stage.read_manifest()["num_shards"])

    def _path(self, index: int, suffix: str) -> Path:
        return self.dir / f"{shard_name(index, self.num_shards)}{suffix}"

    def records_path(self, index: int) -> Path:
        return self._path(index, ".parquet")

    def rejected_path(self, index: int) -> Path:
        return self._path(index, ".rejected.jsonl")

    def stats_path(self, index: int) -> Path:
        return self._path(index, ".stats.json")

    def sha256_path(self, index: int) -> Path:
        return self._path(index, ".sha256")

    def parts_dir(self, index: int) -> Path:
        return self._path(index, ".parts")

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            raise UserError(
                f"stage {self.name!r} has not finished in {self.dir.parent} (no {self.manifest_path.name}); "
                "run the build up to that stage first"
            )
        return json.loads(self.manifest_path.read_text())

    def manifest_sha256(self) -> str:
        """Identifies a finished stage (its manifest holds every shard's hash): later stages record it."""
        self.read_manifest()
        return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()

    def bind_config(self, config: Mapping[str, Any]) -> None:
        """Record ``config`` on first use; refuse to resume a folder made with a different one."""
        path = self.dir / "config.json"
        if path.exists():
            previous = json.loads(path.read_text())
            current = json.loads(dumps(config))
            if previous != current:
                changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
                raise StageConfigMismatch(
                    f"{path} was written by a run with a different config (changed: {', '.join(changed)}). "
                    "Use another --output_dir, or delete that folder to start over."
                )
            return
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed run left behind (call before any process starts writing), and the parts
        of shards that were sealed: a kill between ``finish``'s stats file and its removal of the parts leaves them."""
        for leftover in self.dir.rglob(".*.tmp-*"):
            leftover.unlink()
        for index in range(self.num_shards):
            if self.is_done(index):
                shutil.rmtree(self.parts_dir(index), ignore_errors=True)

    def is_done(self, index: int) -> bool:
        return self.stats_path(index).exists()

    def discard_corrupt_shards(self) -> list[int]:
        """Check every finished shard against the sha256 recorded when it was sealed; a shard whose
        file changed since (truncated, overwritten) loses its files, with a warning naming it, so the
        run makes it again. Returns the shards discarded."""
        corrupt = []
        for index in range(self.num_shards):
            if not self.is_done(index):
                continue
            path, recorded = self.records_path(index), self.sha256_path(index)
            if path.exists() and recorded.exists() and file_sha256(path) == recorded.read_text().strip():
                continue
            logger.warning("%s is missing or changed since it was written; making that shard again", path)
            for stale in (self.stats_path(index), recorded, path, self.rejected_path(index)):
                stale.unlink(missing_ok=True)
            corrupt.append(index)
        if corrupt:
            self.manifest_path.unlink(missing_ok=True)
        return corrupt

    def pending(self, shards: Iterable[int]) -> list[int]:
        return [index for index in shards if not self.is_done(index)]

    def writer(self, index: int, schema: pa.Schema) -> ShardWriter:
        return ShardWriter(self, index, schema)

    def _require_complete(self) -> None:
        missing = self.pending(range(self.num_shards))
        if missing:
            names = ", ".join(shard_name(i, self.num_shards) for i in missing[:5])
            raise UserError(
                f"stage {self.name!r} in {self.dir} is incomplete: {len(missing)} shard(s) unfinished ({names}"
                f"{', …' if len(missing) > 5 else ''}); rerun the same command to resume it"
            )

    def num_rows(self, index: int) -> int:
        return pq.ParquetFile(self.records_path(index)).metadata.num_rows

    def iter_shard(
        self, index: int, columns: Sequence[str] | None = None, batch_size: int = 64
    ) -> Iterator[dict[str, Any]]:
        """The rows of shard ``index``, read ``batch_size`` rows at a time (never the whole shard)."""
        source = pq.ParquetFile(self.records_path(index))
        for batch in source.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()

    def read_shard(self, index: int, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return list(self.iter_shard(index, columns))

    def iter_rows(
        self, start: int = 0, stop: int | None = None, columns: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Rows ``[start, stop)`` of the complete stage, shards in order; shards outside are not opened."""
        self._require_complete()
        offset = 0
        for index in range(self.num_shards):
            if stop is not None and offset >= stop:
                return
            n = self.num_rows(index)
            if offset + n > start:
                for position, row in enumerate(self.iter_shard(index, columns), start=offset):
                    if position >= start and (stop is None or position < stop):
                        yield row
            offset += n

    def total_rows(self) -> int:
        self._require_complete()
        return sum(self.num_rows(index) for index in range(self.num_shards))

    def read_records(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """All rows of a complete stage (for small, image-free stages), shard by shard."""
        return list(self.iter_rows(columns=columns))

    def write_manifest(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Sum the shard stats into ``manifest.json`` (with ``extra``: config, model ids, seeds)."""
        totals: dict[str, Counter] = {}
        for index in range(self.num_shards):
            add_stats(totals, json.loads(self.stats_path(index).read_text()))
        shards = {
            shard_name(i, self.num_shards): self.sha256_path(i).read_text().strip()
            for i in range(self.num_shards)
        }
        manifest = {
            **extra,
            "stage": self.name,
            "num_shards": self.num_shards,
            "stats": sorted_stats(totals),
            "shards_sha256": shards,
        }
        atomic_write_text(
            self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        return manifest
