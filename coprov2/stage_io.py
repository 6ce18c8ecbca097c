"""On-disk stage results: atomic shard files, per-shard stats, a config guard and the manifest.

A stage writes, per shard, its records (``<shard>.jsonl``), the rejected items with their reasons
(``<shard>.rejected.jsonl``) and its stats (``<shard>.stats.json``), each through a temporary file
and ``os.replace``; the stats file goes last and marks the shard finished. A killed run therefore
leaves only whole shards behind, and a rerun skips exactly those. Files hold no timestamps, so a
rerun with the same config and seed writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coprov2.sharding import shard_name


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


class StageConfigMismatch(RuntimeError):
    """The output folder holds a stage run with another config: resuming would mix two runs."""


@dataclass(frozen=True)
class ShardResult:
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    stats: dict[str, Any]


class StageDir:
    """One stage's folder: ``config.json``, shard files and, once complete, ``manifest.json``."""

    def __init__(self, root: Path, name: str, num_shards: int) -> None:
        self.name = name
        self.dir = Path(root) / name
        self.num_shards = num_shards

    def _path(self, index: int, suffix: str) -> Path:
        return self.dir / f"{shard_name(index, self.num_shards)}{suffix}"

    def records_path(self, index: int) -> Path:
        return self._path(index, ".jsonl")

    def rejected_path(self, index: int) -> Path:
        return self._path(index, ".rejected.jsonl")

    def stats_path(self, index: int) -> Path:
        return self._path(index, ".stats.json")

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def manifest_sha256(self) -> str:
        """Identifies a finished stage (its manifest holds every shard's hash): later stages record it."""
        return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()

    def bind_config(self, config: Mapping[str, Any]) -> None:
        """Record ``config`` on first use; refuse to resume a folder made with a different one."""
        path = self.dir / "config.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != json.loads(dumps(config)):
                changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise StageConfigMismatch(
                    f"{path} was written by a run with a different config (changed: {', '.join(changed)}). "
                    "Use another --output-dir, or delete that folder to start over."
                )
            return
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed run left behind (call before any process starts writing)."""
        for leftover in self.dir.glob(".*.tmp-*"):
            leftover.unlink()

    def is_done(self, index: int) -> bool:
        return self.stats_path(index).exists()

    def pending(self, shards: Iterable[int]) -> list[int]:
        return [index for index in shards if not self.is_done(index)]

    def extra_path(self, index: int, suffix: str) -> Path:
        """A further file of shard ``index`` (e.g. ``.parquet`` with its images)."""
        return self._path(index, suffix)

    def write_shard(self, index: int, result: ShardResult, extra: Mapping[str, bytes] | None = None) -> None:
        """Write the shard's files, ``extra`` ones ({suffix: bytes}) included, the stats file last."""
        for suffix, payload in (extra or {}).items():
            atomic_write_bytes(self.extra_path(index, suffix), payload)
        atomic_write_jsonl(self.records_path(index), result.records)
        atomic_write_jsonl(self.rejected_path(index), result.rejected)
        atomic_write_text(self.stats_path(index), dumps(result.stats) + "\n")

    def read_shard(self, index: int) -> list[dict[str, Any]]:
        return read_jsonl(self.records_path(index))

    def read_records(self) -> list[dict[str, Any]]:
        """All records of a complete stage, shard by shard."""
        missing = self.pending(range(self.num_shards))
        if missing:
            names = ", ".join(shard_name(i, self.num_shards) for i in missing[:5])
            raise RuntimeError(
                f"stage {self.name!r} in {self.dir} is incomplete: {len(missing)} shard(s) unfinished ({names}"
                f"{', …' if len(missing) > 5 else ''}); rerun the same command to resume it"
            )
        return [record for i in range(self.num_shards) for record in self.read_shard(i)]

    def write_manifest(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Sum the shard stats into ``manifest.json`` (with ``extra``: config, model ids, seeds)."""
        totals: dict[str, Counter] = {}
        for index in range(self.num_shards):
            stats = json.loads(self.stats_path(index).read_text())
            for key, counts in stats.items():
                totals.setdefault(key, Counter()).update(counts)
        shards = {
            shard_name(i, self.num_shards): hashlib.sha256(self.records_path(i).read_bytes()).hexdigest()
            for i in range(self.num_shards)
        }
        manifest = {
            **extra,
            "stage": self.name,
            "num_shards": self.num_shards,
            "stats": {key: dict(sorted(counter.items())) for key, counter in sorted(totals.items())},
            "shards_sha256": shards,
        }
        atomic_write_text(
            self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        return manifest
