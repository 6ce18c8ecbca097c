"""Deterministic sharding shared by every stage, so processes and nodes can each take a share.

A work item (a concept, a pair) goes to ``shard_of(key)``, a hash of its key: adding a concept to
the taxonomy does not move the others, so finished shards of an earlier run stay valid. Shard ``i``
belongs to rank ``i % world_size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def shard_of(key: str, num_shards: int) -> int:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % num_shards


def split_into_shards(items: Iterable[T], key: Callable[[T], str], num_shards: int) -> list[list[T]]:
    """Items grouped by shard, in their original order within each shard."""
    shards: list[list[T]] = [[] for _ in range(num_shards)]
    for item in items:
        shards[shard_of(key(item), num_shards)].append(item)
    return shards


def shards_for_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    return list(range(rank, num_shards, world_size))


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"
