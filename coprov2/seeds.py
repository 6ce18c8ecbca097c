"""Seeds derived from a run seed and names, so every request and image has its own reproducible seed.

Why not ``run_seed + i``: vLLM gives identical samples for identical per-request seeds, and indices
shift when the taxonomy or a shard changes. A hash of the names stays put.
"""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, *parts: object) -> int:
    """A seed in ``[0, 2**31)`` that depends only on ``run_seed`` and ``parts`` (their ``str``)."""
    key = "\x1f".join([str(run_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF
