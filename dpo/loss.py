"""The Diffusion-DPO loss of the SafetyDPO release (Wallace et al. 2023), as a pure function.

Winner and loser share noise, timestep and caption. With ``L = ||eps_pred - target||^2`` averaged
per sample, ``inside = -0.5 * beta * ((L_w - L_l)_model - (L_w - L_l)_ref)`` and
``loss = -logsigmoid(inside).mean()``: the model is rewarded for denoising the winner better than
the loser *relative to the frozen reference*. ``inside`` is the implicit reward margin.

:func:`add_preserving_term` adds the output-preserving term of ``dpo/retain.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOLossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample (all but the batch dimension averaged), in float32."""
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))


def diffusion_dpo_loss(
    model_pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor, beta: float
) -> DPOLossOutput:
    """``model_pred``, ``ref_pred``, ``target``: ``[2B, ...]``, winners first then losers."""
    model_w, model_l = per_sample_mse(model_pred, target).chunk(2)
    ref_w, ref_l = per_sample_mse(ref_pred, target).chunk(2)
    model_gap, ref_gap = model_w - model_l, ref_w - ref_l
    inside = -0.5 * beta * (model_gap - ref_gap)
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():  # one device-to-host copy per step for all the metrics, not one per metric
        values = torch.stack(
            [
                loss,
                ((inside > 0).float() + 0.5 * (inside == 0).float()).mean(),
                inside.mean(),
                model_gap.mean(),
                ref_gap.mean(),
                0.5 * (model_w.mean() + model_l.mean()),
            ]
        ).tolist()
    metrics = dict(
        zip(
            ("loss", "implicit_acc", "reward_margin", "model_gap", "ref_gap", "model_mse"),
            values,
            strict=True,
        )
    )
    return DPOLossOutput(loss, metrics)


def add_preserving_term(output: DPOLossOutput, term: torch.Tensor, weight: float) -> DPOLossOutput:
    """``output`` plus ``weight`` x the output-preserving ``term`` (``dpo/retain.py``), logged as ``retain``."""
    return DPOLossOutput(output.loss + weight * term, {**output.metrics, "retain": term.item()})
