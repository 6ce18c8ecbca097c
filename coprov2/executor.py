"""Runs a sharded stage: each process (``accelerate launch`` rank) takes its shards, skips finished ones.

A stage (after datatrove's pipeline steps) is a small object built from its own config: it says how
many shards it has, what its output depends on (:meth:`Stage.fingerprint`) and how to make one
shard, streaming its rows into a :class:`~coprov2.stage_io.ShardWriter`. The executor owns
everything around it (config guard, leftovers of killed runs, rank split, barriers, progress, the
manifest) and knows nothing of any stage. A single process is the degenerate case of one rank.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from coprov2.locking import folder_lock
from coprov2.sharding import shards_for_rank
from coprov2.stage_io import ShardWriter, StageDir

logger = logging.getLogger(__name__)


def distributed_state() -> PartialState:
    """This process's place among those ``accelerate launch`` / ``torchrun`` started (one, by default).

    Without CUDA, accelerate forms a CPU (gloo) group only when asked to use the CPU, so that is asked
    for explicitly: ``accelerate launch --multi_gpu --num_processes N`` then splits work on a CPU box too.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def config_fingerprint(config: Any, neutral: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``asdict(config)`` minus the fields in ``neutral`` (dotted paths into nested configs)."""

    def strip(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        kept = {}
        for key, value in values.items():
            path = f"{prefix}{key}"
            if path in neutral:
                continue
            kept[key] = strip(value, path + ".") if isinstance(value, dict) else value
        return kept

    return strip(dataclasses.asdict(config), "")


class Stage:
    """One step of a pipeline: subclasses set ``name``, ``schema``, and implement ``run_shard``.

    ``config`` is the stage's own dataclass. Its fingerprint, the resume guard, is the whole config
    minus ``OUTPUT_NEUTRAL``: fields that cannot change what the stage writes (each listed with why),
    plus whatever :meth:`inputs` says the stage read (upstream manifests, template contents).
    """

    name: ClassVar[str]
    schema: ClassVar[pa.Schema]
    OUTPUT_NEUTRAL: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any) -> None:
        self.config = config

    def num_shards(self, root: Path) -> int:
        raise NotImplementedError

    def inputs(self, root: Path) -> dict[str, Any]:
        """Fingerprints of what the stage reads besides its config (e.g. upstream manifests)."""
        return {}

    def fingerprint(self, root: Path) -> dict[str, Any]:
        return {**config_fingerprint(self.config, self.OUTPUT_NEUTRAL), **self.inputs(root)}

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        """Stream shard ``index``'s rows into ``writer``, skipping the ``writer.committed`` batches done."""
        raise NotImplementedError

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        return {}

    def summarize(self, stage_dir: StageDir) -> Mapping[str, Any]:
        """Runs on the main process once every shard is finished (a global pass over the records)."""
        return {}


def run_stage(
    stage: Stage, root: str | Path, progress: bool = True, wait_for_lock: bool = False
) -> dict[str, Any]:
    """Run ``stage`` on this process's unfinished shards; every process returns the manifest.

    The main process holds the stage folder's lock (:mod:`coprov2.locking`) from before it removes the
    leftovers of killed runs until the manifest is written: another launch on the same folder waits
    (``wait_for_lock``) or stops with a :class:`~coprov2.locking.FolderBusy` naming the holder.
    """
    root = Path(root)
    state = distributed_state()
    num_shards = stage.num_shards(root)
    stage_dir = StageDir(root, stage.name, num_shards)
    fingerprint = {**stage.fingerprint(root), "num_shards": num_shards}
    with folder_lock(stage_dir.dir, wait_for_lock) if state.is_main_process else nullcontext():
        if state.is_main_process:
            stage_dir.bind_config(fingerprint)
            stage_dir.remove_partial_files()
            stage_dir.discard_corrupt_shards()
        state.wait_for_everyone()
        mine = stage_dir.pending(shards_for_rank(num_shards, state.process_index, state.num_processes))
        logger.info(
            "%s: rank %d of %d takes shards %s", stage.name, state.process_index, state.num_processes, mine
        )
        for index in tqdm(
            mine, desc=f"{stage.name} shards (rank {state.process_index})", disable=not progress
        ):
            writer = stage_dir.writer(index, stage.schema)
            if writer.committed:
                logger.info(
                    "%s: shard %d resumes after %d committed batches", stage.name, index, writer.committed
                )
            stage.run_shard(root, index, writer)
            writer.finish()
        state.wait_for_everyone()
        if state.is_main_process:
            summary = stage.summarize(stage_dir)
            stage_dir.write_manifest({"config": fingerprint, **stage.manifest_extra(root), **summary})
        # the next stage (on every rank) starts from this manifest
        state.wait_for_everyone()
    return stage_dir.read_manifest()
