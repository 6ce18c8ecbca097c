"""ConceptRouter: per prompt, a score per category and the categories whose threshold it reaches.

A small head on :mod:`merge.router.features`'s text features (``merge.router.config.HEADS``: concept centroids, a
learned concept embedding, or a linear or one-hidden-layer classifier), with per-category thresholds set on held-out
prompts. Saved and loaded with ``huggingface_hub``'s ``PyTorchModelHubMixin``
(``model.safetensors`` + ``config.json``: ``save_pretrained``, ``from_pretrained(folder or repo id)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from coprov2.errors import UserError
from dpo.families import Family, family_of_pipeline
from merge.router.features import PROBES, pipeline_family, prompt_features

#: The least cosine between a pipeline's probe features and the router's for it to read the same text encoder.
SAME_ENCODER = 0.999


@dataclass(frozen=True)
class Route:
    """One prompt's routing: the categories whose experts apply, and every category's score."""

    categories: tuple[str, ...]
    scores: dict[str, float]


class ConceptRouter(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="alignguard",
    tags=["alignguard", "safety", "router", "prompt-guard"],
):
    """Scores prompts against the categories of a set of safety experts (their training categories)."""

    def __init__(
        self, categories: list[str], feature_dim: int, head: str = "prototype", hidden_size: int = 256,
        base: str = "", family: str = "", family_settings: dict | None = None, concepts: list[str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.categories, self.feature_dim, self.base, self.kind = list(categories), feature_dim, base, head
        self.family, self.family_settings = family, dict(family_settings or {})
        #: prototype, contrastive: the concepts (``category/concept``) whose centroids or rows score their category
        self.concepts = list(concepts or [])
        #: the index of each concept's category, for the per-category maximum of the concepts' cosines
        self.owner = torch.tensor(
            [self.categories.index(c.split("/", 1)[0]) for c in self.concepts], dtype=torch.long
        )
        width = len(self.categories)
        if head == "prototype":
            self.head = None
            self.register_buffer("centroids", torch.zeros(len(self.concepts), feature_dim))
        elif head == "contrastive":
            # Latent Guard's idea: a learned embedding where a prompt lies near the concepts it holds; one row more
            # for "no concept", where the negatives are pulled
            self.head = nn.Linear(feature_dim, hidden_size, bias=False)
            self.concept_embeddings = nn.Parameter(torch.zeros(len(self.concepts) + 1, hidden_size))
        elif head == "linear":
            self.head = nn.Linear(feature_dim, width)
        else:
            self.head = nn.Sequential(
                nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, width)
            )
        # standardisation of the features, thresholds, and the probe prompts' features (the encoder's fingerprint)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        self.register_buffer("thresholds", torch.full((width,), 0.5))
        self.register_buffer("probes", torch.zeros(len(PROBES), feature_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, C]`` scores of each category from ``[P, D]`` features: probabilities (linear, mlp), or the cosine
        to the category's nearest concept, its centroid in the standardised feature space (prototype) or its
        learned embedding (contrastive)."""
        inputs = (features.float() - self.mean) / self.scale
        if self.kind in ("linear", "mlp"):
            return torch.sigmoid(self.head(inputs))
        if self.kind == "prototype":
            cosines = nn.functional.cosine_similarity(inputs[:, None], self.centroids[None], dim=2)
        else:
            cosines = self.embed(inputs) @ nn.functional.normalize(self.concept_embeddings[:-1], dim=1).T
        scores = torch.full((len(features), len(self.categories)), -1.0)
        return scores.scatter_reduce(1, self.owner.expand(len(features), -1), cosines, reduce="amax")

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """contrastive: standardised features in the learned embedding, unit length."""
        return nn.functional.normalize(self.head(inputs), dim=1)

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """``[P, C]`` bool: the categories each prompt is routed to."""
        return scores >= self.thresholds

    def features(self, pipe, prompts: list[str], family: Family | None = None) -> torch.Tensor:
        """The text features of ``prompts`` as the router was trained on them (the pipeline's own encoders;
        ``family``: for a pipeline loaded without its denoiser)."""
        device = next(pipe.text_encoder.parameters()).device
        family = pipeline_family(pipe, self.family_settings.get("max_sequence_length"), family)
        return prompt_features(pipe, family, prompts, device)

    def check_pipeline(self, pipe, name: str = "the router", family: Family | None = None) -> None:
        """The pipeline reads prompts with the text encoder the router was trained on, else one line saying so."""
        family = family or family_of_pipeline(pipe)
        if family.name != self.family:
            raise UserError(
                f"{name} reads a {self.family} base's text encoder ({self.base}); this pipeline is a {family.name} "
                "base: train a router for it (python -m merge.router --base ...)"
            )
        family = pipeline_family(pipe, self.family_settings.get("max_sequence_length"), family)
        probes = prompt_features(pipe, family, list(PROBES), next(pipe.text_encoder.parameters()).device)
        if probes.shape[1] != self.feature_dim or (
            torch.nn.functional.cosine_similarity(probes, self.probes.cpu(), dim=1).min() < SAME_ENCODER
        ):
            raise UserError(
                f"{name} was trained on the text encoder of {self.base}; this pipeline's encodes prompts otherwise "
                f"(features of width {probes.shape[1]}, the router's {self.feature_dim}): train a router for this base"
            )

    @torch.no_grad()
    def route(self, pipe, prompts: list[str], family: Family | None = None) -> list[Route]:
        """Each prompt's categories and scores (Latent Guard's use: the router alone is a prompt guard)."""
        if not prompts:
            return []
        scores = self(self.features(pipe, prompts, family).to(self.mean.device)).cpu()
        chosen = self.decide(scores)
        return [
            Route(
                tuple(c for c, on in zip(self.categories, flags.tolist(), strict=True) if on),
                {c: round(float(s), 6) for c, s in zip(self.categories, row.tolist(), strict=True)},
            )
            for row, flags in zip(scores, chosen, strict=True)
        ]
