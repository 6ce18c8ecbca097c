"""How close a safe twin stays to its unsafe prompt: the paper's dataset comparison.

``word_sequence_ratio`` is difflib's ratio over lower-cased word sequences (the official release's pairs
have a median of 0.375, p10 0.167, p90 0.636); ``token_jaccard`` is |U and S| / |U or S| over word sets.
A twin that keeps subject, setting and composition scores high on both; an unrelated "safe" prompt low.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np


def word_sequence_ratio(unsafe: str, safe: str) -> float:
    return difflib.SequenceMatcher(None, unsafe.lower().split(), safe.lower().split()).ratio()


def token_jaccard(unsafe: str, safe: str) -> float:
    u, s = set(unsafe.lower().split()), set(safe.lower().split())
    return len(u & s) / len(u | s) if u | s else 1.0


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """``n``, ``median``, ``p10``, ``p90`` and ``mean`` of ``values`` (None when there are none)."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(array):
        return {"n": 0, "median": None, "p10": None, "p90": None, "mean": None}
    p10, median, p90 = np.percentile(array, [10, 50, 90])
    return {"n": len(array), "median": round(float(median), 4), "p10": round(float(p10), 4),
            "p90": round(float(p90), 4), "mean": round(float(array.mean()), 4)}  # fmt: skip
