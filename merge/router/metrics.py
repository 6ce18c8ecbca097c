"""How well a router routes: per category precision and recall, and how often prompts of no category get one."""

from __future__ import annotations

import torch


def routing_metrics(
    chosen: torch.Tensor, labels: torch.Tensor, kinds: list[str], categories: list[str]
) -> dict:
    """``chosen``/``labels``: ``[P, C]`` bool / multi-hot. Per category: precision (of the prompts routed to it, the
    share that are its), recall (of its prompts, the share routed to it) and the counts; for each kind of prompt
    of no category (``neutral``, ``safe twin``), the share routed to any category (its false-positive rate);
    NaN where there is nothing to count."""
    chosen, labels = chosen.bool(), labels.bool()
    out: dict = {"categories": {}}
    for k, category in enumerate(categories):
        hits = int((chosen[:, k] & labels[:, k]).sum())
        routed, prompts = int(chosen[:, k].sum()), int(labels[:, k].sum())
        out["categories"][category] = {
            "precision": hits / routed if routed else float("nan"),
            "recall": hits / prompts if prompts else float("nan"),
            "prompts": prompts,
            "routed": routed,
        }
    for kind in ("neutral", "safe twin"):
        rows = torch.tensor([k == kind for k in kinds], dtype=torch.bool)
        count = int(rows.sum())
        key = kind.replace(" ", "_")
        out[f"{key}_prompts"] = count
        out[f"{key}_false_positive_rate"] = (
            float(chosen[rows].any(1).float().mean()) if count else float("nan")
        )
    return out


def best_f1_threshold(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The threshold on ``scores`` with the highest F1 for ``positive``, halfway between the lowest score it keeps
    and the next lower one (a margin both ways)."""
    if not positive.any():
        raise ValueError("no positive to set a threshold on")
    order = scores.argsort(descending=True)
    ranked, truth = scores[order], positive[order].float()
    hits = truth.cumsum(0)
    f1 = 2 * hits / (torch.arange(1, len(ranked) + 1) + truth.sum())
    best = int(f1.argmax())
    below = float(ranked[best + 1]) if best + 1 < len(ranked) else float(ranked[best])
    return (float(ranked[best]) + below) / 2
