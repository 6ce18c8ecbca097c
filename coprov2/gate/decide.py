"""The gate's rule: keep a pair when each image matches its own prompt, and better than its twin's.

With ``s(img, txt)`` the CLIP cosine, a pair passes when
- ``s(u_img, u_txt) >= t`` and ``s(s_img, s_txt) >= t``, where ``t`` is the larger of the absolute
  threshold ``min_score`` and, if ``percentile > 0``, that percentile of all own-prompt scores of the
  run (so the worst ``percentile`` % are dropped whatever the CLIP model's score scale);
- if ``require_own_closer``: ``s(u_img, u_txt) > s(u_img, s_txt)`` and ``s(s_img, s_txt) > s(s_img, u_txt)``.
Every failed condition is listed as a reason; a pair with no reason passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from coprov2.errors import UserError
from coprov2.gate.config import GateConfig

REASONS = (
    "unsafe_image_below_threshold",
    "safe_image_below_threshold",
    "unsafe_image_closer_to_safe_prompt",
    "safe_image_closer_to_unsafe_prompt",
)


def threshold(scores: Sequence[dict[str, Any]], min_score: float, percentile: float) -> float:
    if not 0 <= percentile <= 100:
        raise UserError(f"gate_percentile must be within [0, 100], got {percentile}")
    if percentile == 0 or not scores:
        return min_score
    own = [s["score_unsafe"] for s in scores] + [s["score_safe"] for s in scores]
    return max(min_score, float(np.percentile(own, percentile)))


def decide(scores: Sequence[dict[str, Any]], config: GateConfig) -> tuple[list[dict[str, Any]], float]:
    """One decision per score record ({id, passed, reasons}), and the threshold that was applied."""
    cut = threshold(scores, config.min_score, config.percentile)
    decisions = []
    for s in scores:
        failed = (
            s["score_unsafe"] < cut,
            s["score_safe"] < cut,
            config.require_own_closer and s["score_unsafe"] <= s["score_unsafe_image_safe_prompt"],
            config.require_own_closer and s["score_safe"] <= s["score_safe_image_unsafe_prompt"],
        )
        reasons = [reason for reason, bad in zip(REASONS, failed, strict=True) if bad]
        decisions.append({"id": s["id"], "passed": not reasons, "reasons": reasons})
    return decisions, cut
