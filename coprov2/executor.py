"""Runs a sharded stage: each process (``accelerate launch`` rank) takes its shards, skips finished ones.

The step itself is a plain function ``shard index -> (ShardResult, extra files)``; this module owns
everything around it (config guard, leftovers of killed runs, rank split, barriers, progress, the
manifest), so that each stage module only says what one shard is. A single process is the
degenerate case of one rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from coprov2.sharding import shards_for_rank
from coprov2.stage_io import ShardResult, StageDir

logger = logging.getLogger(__name__)

ShardStep = Callable[[int], tuple[ShardResult, Mapping[str, bytes]]]


def distributed_state() -> PartialState:
    """This process's place among those ``accelerate launch`` / ``torchrun`` started (one, by default).

    Without CUDA, accelerate forms a CPU (gloo) group only when asked to use the CPU, so that is asked
    for explicitly: ``accelerate launch --multi_gpu --num_processes N`` then splits work on a CPU box too.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def run_sharded(
    stage: StageDir,
    stage_config: Mapping[str, Any],
    step: ShardStep,
    manifest_extra: Mapping[str, Any],
    progress: bool = True,
    summarize: Callable[[], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``step`` on this process's unfinished shards; the main process returns the manifest.

    ``summarize`` runs on the main process once every shard is finished (a global pass over the
    stage's records); what it returns goes into the manifest.
    """
    state = distributed_state()
    if state.is_main_process:
        stage.bind_config(stage_config)
        stage.remove_partial_files()
    state.wait_for_everyone()
    mine = stage.pending(shards_for_rank(stage.num_shards, state.process_index, state.num_processes))
    logger.info(
        "%s: rank %d of %d takes shards %s", stage.name, state.process_index, state.num_processes, mine
    )
    for index in tqdm(mine, desc=f"{stage.name} shards (rank {state.process_index})", disable=not progress):
        result, extra = step(index)
        stage.write_shard(index, result, extra)
    state.wait_for_everyone()
    manifest: dict[str, Any] = {}
    if state.is_main_process:
        summary = summarize() if summarize else {}
        manifest = stage.write_manifest({"config": dict(stage_config), **manifest_extra, **summary})
    # the next stage (on every rank) starts from this manifest
    state.wait_for_everyone()
    return manifest
