"""Merging E LoRA experts layer by layer into one LoRA ``(A, B)`` with the scale folded in (alpha = rank).

Co-Merge (ours, after AlignGuard; the paper does not publish its exact measure):

- *rows* (``comerge``): for every adapted layer and every output channel ``o``, the expert whose
  LoRA branch ``h_e = scale_e * B_e A_e x_e`` has the largest mean ``|h_e[o]|`` over the calibration
  inputs wins that channel. With masks ``m_e[o] = [winner(o) == e]`` the merge is exact as a LoRA of
  rank ``E*r``: ``B = [diag(m_1) B_1 | ... | diag(m_E) B_E]``, ``A = [scale_1 A_1; ...; scale_E A_E]``,
  so row ``o`` of the merged delta is row ``o`` of the winner's ``scale_e B_e A_e``.
- *weights* (``comerge_svd``), the paper's wording taken literally: every weight ``(o, i)`` of the
  delta comes from the expert with the largest mean ``|delta_e[o, i] * x_e[i]|``, then a truncated SVD
  brings the merged delta back to a chosen rank.

``x_e`` are the layer's inputs with expert ``e`` active (``merge/calibrate.py``). Two variants of
both, chosen by arguments rather than by method name, and compared in ``benchmarks/merge_scaling.py``:

- *normalised scores* (``normalize=True``): each expert's scores in a layer are divided by their
  mean over that layer's channels (rows) or weights, so a channel goes to the expert for which it
  matters most *relative to the rest of that expert*; without it, an expert trained to larger
  weights wins every channel by scale alone.
- *own-category calibration* (``calibration_scope="own"`` in ``merge/run.py``): expert ``e``'s
  scores are measured on its own category's prompts only, instead of on the prompts of every
  category; what each expert does on the inputs it was trained for, not on everybody's.

*Closed-form fusion* (``regmean``, the common core of RegMean, Jin et al. ICLR 2023, and MACE's
fusion, Lu et al. CVPR 2024): per layer, the delta that best reproduces every expert on its own
inputs while changing little on the preserve prompts' inputs,
``argmin_D sum_e |(D - delta_e) X_e^T|^2 + lambda |D X_0^T|^2 = (sum_e delta_e G_e)(sum_e G_e + lambda G0 + eps I)^-1``
with ``G = X^T X / n`` (``merge/calibrate.py``'s ``GramRecorder``), solved in float64 and stored as a
LoRA by truncated SVD at the smallest rank that keeps ``keep_energy`` of every layer's energy (capped).
``eps`` is relative: it is multiplied by the mean diagonal of the matrix it regularises.

Baselines: ``linear`` (the average of the deltas, exact as a rank ``E*r`` concatenation),
``sum`` (concatenation: the sum of the deltas), and peft's ``ties``, ``dare_linear`` (weights 1/E),
``dare_ties`` applied to the deltas (``peft.utils.merge_utils``) followed by a truncated SVD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft.utils import merge_utils

from coprov2.errors import UserError
from merge.calibrate import LayerGrams
from merge.experts import Expert

Merged = dict[str, tuple[torch.Tensor, torch.Tensor]]
METHODS = ("comerge", "comerge_svd", "regmean", "linear", "sum", "ties", "dare_linear", "dare_ties")
NEEDS_CALIBRATION = ("comerge", "comerge_svd", "regmean")


def _concat(experts: list[Expert], layer: str, weights: list[float], masks: list[torch.Tensor] | None = None):
    A = torch.cat(
        [w * e.layers[layer].scale * e.layers[layer].A for w, e in zip(weights, experts, strict=True)]
    )
    Bs = [e.layers[layer].B for e in experts]
    if masks is not None:
        Bs = [mask[:, None].to(B.dtype) * B for mask, B in zip(masks, Bs, strict=True)]
    return A, torch.cat(Bs, dim=1)


def concat_merge(experts: list[Expert], weights: list[float]) -> Merged:
    """``sum_e w_e * delta_e`` exactly, as a LoRA of rank ``sum(r_e)``."""
    return {layer: _concat(experts, layer, weights) for layer in experts[0].layers}


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[E, ...]`` divided, per expert, by its mean over the rest (an all-zero expert stays 0)."""
    mean = scores.flatten(1).mean(dim=1).clamp_min(torch.finfo(scores.dtype).tiny)
    return scores / mean.view(-1, *([1] * (scores.dim() - 1)))


def comerge(experts: list[Expert], row_scores: dict[str, torch.Tensor], normalize: bool = False) -> Merged:
    """Row-masked concatenation; ``row_scores[layer]`` is ``[E, out]`` mean ``|h_e|`` per output channel."""
    merged = {}
    for layer in experts[0].layers:
        scores = normalized(row_scores[layer]) if normalize else row_scores[layer]
        winner = scores.argmax(dim=0)
        masks = [winner == e for e in range(len(experts))]
        merged[layer] = _concat(experts, layer, [1.0] * len(experts), masks)
    return merged


def truncated_lora(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factorisation ``B @ A`` of ``delta`` (Eckart-Young), split as sqrt(S) both sides."""
    return svd_lora(*torch.linalg.svd(delta.float(), full_matrices=False), rank)


def svd_lora(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors ``(A, B)`` (float32) of the top-``rank`` singular triplets, split as sqrt(S) both sides.

    Where ``rank`` exceeds the triplets there are (a layer's own rank, ``min(out, in)``), the factors are
    padded with zeros to ``rank``: one LoRA file holds one rank for every layer, and the padding changes no output.
    """
    kept = min(rank, S.shape[0])
    root = S[:kept].sqrt()
    A, B = (root[:, None] * Vh[:kept]).float(), (U[:, :kept] * root[None, :]).float()
    padding = rank - kept
    return torch.nn.functional.pad(A, (0, 0, 0, padding)), torch.nn.functional.pad(B, (0, padding))


def comerge_svd(
    experts: list[Expert], input_scores: dict[str, torch.Tensor], rank: int, normalize: bool = False
) -> Merged:
    """Per-weight selection by mean ``|delta_e[o,i] x_e[i]|``; ``input_scores[layer]`` is ``[E, in]`` mean ``|x_e|``."""
    merged = {}
    for layer in experts[0].layers:
        deltas = torch.stack([e.layers[layer].delta() for e in experts])
        scores = deltas.abs() * input_scores[layer][:, None, :]
        if normalize:
            scores = normalized(scores)
        chosen = deltas.gather(0, scores.argmax(dim=0, keepdim=True))[0]
        merged[layer] = truncated_lora(chosen, rank)
    return merged


def fused_delta(grams: LayerGrams, lam: float, eps: float) -> torch.Tensor:
    """``M (S + lam G0 + eps' I)^-1`` in float64, ``eps' = eps * mean diag(S + lam G0)``."""
    system = grams.S.clone()
    if lam and grams.G0 is not None:
        system += lam * grams.G0
    ridge = eps * system.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    system.diagonal().add_(ridge)
    # the system is symmetric: solve(system, M^T)^T = M system^-1
    return torch.linalg.solve(system, grams.M.T).T


def regmean(
    experts: list[Expert], grams: dict[str, LayerGrams], *, lam: float = 1.0, eps: float = 1e-4,
    rank: int, keep_energy: float = 0.99,
) -> tuple[Merged, dict[str, float]]:  # fmt: skip
    """The closed-form fusion, and what the LoRA keeps of it: ``{"rank", "kept_energy_min", "kept_energy"}``
    (the smallest per-layer share of the fused delta's squared singular values, and the overall one).

    One layer's fused delta exists at a time; only its top-``rank`` singular triplets are kept.
    """
    factors, spectra = {}, {}
    for layer in experts[0].layers:
        U, S, Vh = torch.linalg.svd(fused_delta(grams[layer], lam, eps), full_matrices=False)
        factors[layer] = (U[:, :rank], S[:rank], Vh[:rank])
        spectra[layer] = S.pow(2)
    needed = 1
    for energy in spectra.values():
        share = energy.cumsum(0) / energy.sum().clamp_min(torch.finfo(torch.float64).tiny)
        needed = max(needed, int((share < keep_energy).sum()) + 1)
    kept_rank = min(rank, needed)
    merged, kept = {}, []
    for layer, (U, S, Vh) in factors.items():
        merged[layer] = svd_lora(U, S, Vh, kept_rank)
        kept.append((spectra[layer][:kept_rank].sum().item(), spectra[layer].sum().item()))
    kept_total = sum(k for k, _ in kept) / max(sum(t for _, t in kept), torch.finfo(torch.float64).tiny)
    kept_min = min((k / t if t else 1.0) for k, t in kept)
    return merged, {"rank": kept_rank, "kept_energy_min": kept_min, "kept_energy": kept_total}


def peft_merge(experts: list[Expert], method: str, density: float, rank: int, seed: int = 0) -> Merged:
    """peft's TIES / DARE on the full deltas, then a truncated SVD to ``rank`` (DARE seeded: it drops at random)."""
    function: Callable = {
        "ties": merge_utils.ties,
        "dare_linear": merge_utils.dare_linear,
        "dare_ties": merge_utils.dare_ties,
    }[method]
    # TIES' disjoint merge already averages the agreeing deltas; DARE-linear is a weighted sum, so 1/E
    # makes it an average like ``linear`` (identical experts then give back the expert's delta).
    weights = torch.full((len(experts),), 1.0 / len(experts) if method == "dare_linear" else 1.0)
    merged = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in experts[0].layers:
            delta = function([e.layers[layer].delta() for e in experts], weights, density)
            merged[layer] = truncated_lora(delta, rank)
    return merged


def merge_experts(
    experts: list[Expert],
    method: str,
    *,
    row_scores: dict[str, torch.Tensor] | None = None,
    input_scores: dict[str, torch.Tensor] | None = None,
    rank: int | None = None,
    density: float = 0.5,
    seed: int = 0,
    normalize: bool = False,
    grams: dict[str, LayerGrams] | None = None,
    regmean_lambda: float = 1.0,
    regmean_epsilon: float = 1e-4,
    keep_energy: float = 0.99,
    info: dict[str, float] | None = None,
) -> Merged:
    """Dispatch to one method; ``rank`` (SVD methods; the cap of ``regmean``'s) defaults to the sum of the
    experts' ranks; ``normalize`` (Co-Merge only) compares each expert's scores relative to its own mean;
    ``info``, where given, receives what ``regmean`` kept."""
    if method not in METHODS:
        raise UserError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    rank = rank or sum(e.rank for e in experts)
    if method == "linear":
        return concat_merge(experts, [1.0 / len(experts)] * len(experts))
    if method == "sum":
        return concat_merge(experts, [1.0] * len(experts))
    if method == "comerge":
        if row_scores is None:
            raise UserError("comerge needs calibration scores")
        return comerge(experts, row_scores, normalize)
    if method == "comerge_svd":
        if input_scores is None:
            raise UserError("comerge_svd needs calibration scores")
        return comerge_svd(experts, input_scores, rank, normalize)
    if method == "regmean":
        if grams is None:
            raise UserError("regmean needs calibration statistics")
        merged, kept = regmean(
            experts, grams, lam=regmean_lambda, eps=regmean_epsilon, rank=rank, keep_energy=keep_energy
        )
        if info is not None:
            info.update(kept)
        return merged
    return peft_merge(experts, method, density, rank, seed)
