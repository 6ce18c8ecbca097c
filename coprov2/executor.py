"""Runs a sharded stage: each process (``accelerate launch`` rank) takes its shards, skips finished ones.

The step itself is a plain function ``shard index -> (ShardResult, extra files)``; this module owns
everything around it (config guard, leftovers of killed runs, rank split, barriers, progress, the
manifest), so that each stage module only says what one shard is. A single process is the
degenerate case of one rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from accelerate import PartialState
from tqdm.auto import tqdm

from coprov2.sharding import shards_for_rank
from coprov2.stage_io import ShardResult, StageDir

ShardStep = Callable[[int], tuple[ShardResult, Mapping[str, bytes]]]


def run_sharded(
    stage: StageDir,
    stage_config: Mapping[str, Any],
    step: ShardStep,
    manifest_extra: Mapping[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``step`` on this process's unfinished shards; the main process returns the manifest."""
    state = PartialState()
    if state.is_main_process:
        stage.bind_config(stage_config)
        stage.remove_partial_files()
    state.wait_for_everyone()
    mine = stage.pending(shards_for_rank(stage.num_shards, state.process_index, state.num_processes))
    for index in tqdm(mine, desc=f"{stage.name} shards (rank {state.process_index})", disable=not progress):
        result, extra = step(index)
        stage.write_shard(index, result, extra)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    return stage.write_manifest({"config": dict(stage_config), **manifest_extra})
