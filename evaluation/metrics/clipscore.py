"""CLIPScore as the release computes it: per image 100 * cos(image embedding, prompt embedding), no
clamp (torchmetrics clamps at 0, and breaks on transformers 5), mean over images.

Prompts longer than CLIP's 77 tokens are truncated (transformers does not truncate unless told): the
embedder is the builder's gate one (``coprov2.gate.clip_scores.ClipEmbedder``), which does.
"""

from __future__ import annotations

import functools

import numpy as np

from coprov2.errors import UserError
from coprov2.executor import distributed_state
from coprov2.gate.clip_scores import ClipEmbedder


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """100 * cos per row of (N, D) image and text embeddings (normalised here, whatever they come as)."""
    images = image_embeddings / np.linalg.norm(image_embeddings, axis=1, keepdims=True)
    texts = text_embeddings / np.linalg.norm(text_embeddings, axis=1, keepdims=True)
    return 100.0 * np.einsum("nd,nd->n", images.astype(np.float64), texts.astype(np.float64))


@functools.cache
def shared_embedder(model: str, batch_size: int = 32) -> ClipEmbedder:
    """One CLIP per model id per process: Q16 and CLIPScore share it when they name the same model."""
    try:
        return ClipEmbedder(model, device=distributed_state().device, batch_size=batch_size)
    except OSError as error:  # not a folder, and not in the Hub cache with no network
        raise UserError(
            f"CLIP model {model}: cannot load it ({str(error).splitlines()[0][:200]}); give a local folder, or "
            "download it first (--clip_model / --q16_clip_model)"
        ) from None
