"""CLIP image and text embeddings, batched, L2-normalized; the four scores of a pair are their dot products.

Loaded through transformers' ``CLIPModel`` + ``CLIPProcessor`` (works without torchvision, which the
CPU stack cannot have; open_clip would need it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

#: The four scores recorded per pair: s(image, prompt) for own and twin prompts.
SCORE_NAMES = (
    "score_unsafe",
    "score_safe",
    "score_unsafe_image_safe_prompt",
    "score_safe_image_unsafe_prompt",
)


def _projected(output: torch.Tensor | object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEmbedder:
    def __init__(self, model: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = CLIPModel.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)
        self.batch_size = batch_size

    @torch.inference_mode()
    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(self.device, self.model.dtype)
            chunks.append(_projected(self.model.get_image_features(pixel_values=pixel_values)))
        return _normalized(chunks, self.model.config.projection_dim)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor(
                text=list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.model.config.text_config.max_position_embeddings,
            ).to(self.device)
            chunks.append(_projected(self.model.get_text_features(**tokens)))
        return _normalized(chunks, self.model.config.projection_dim)


def _normalized(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    embeddings = torch.cat(chunks).float()
    return torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy()


def pair_scores(
    unsafe_image: np.ndarray, safe_image: np.ndarray, unsafe_text: np.ndarray, safe_text: np.ndarray
) -> dict[str, np.ndarray]:
    """Row-wise cosine similarities of normalized embeddings (N, D) -> four arrays of N scores."""
    return dict(
        zip(
            SCORE_NAMES,
            (
                np.einsum("nd,nd->n", unsafe_image, unsafe_text),
                np.einsum("nd,nd->n", safe_image, safe_text),
                np.einsum("nd,nd->n", unsafe_image, safe_text),
                np.einsum("nd,nd->n", safe_image, unsafe_text),
            ),
            strict=True,
        )
    )
