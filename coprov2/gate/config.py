"""Config of stage ``gate`` (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GateConfig:
    """The CLIP model and the keep rule (see coprov2/gate/decide.py)."""

    clip_model: str = field(default="openai/clip-vit-large-patch14", metadata={"help": "CLIP id or folder"})
    batch_size: int = field(default=64, metadata={"help": "images or texts per CLIP forward"})
    min_score: float = field(
        default=0.2, metadata={"help": "absolute cosine threshold for own-prompt scores"}
    )
    percentile: float = field(
        default=0.0,
        metadata={"help": "also drop own-prompt scores below this run percentile (0-100; 0: off)"},
    )
    require_own_closer: bool = field(
        default=True, metadata={"help": "each image must be closer to its own prompt than to its twin's"}
    )
    image_embeddings: str | None = field(
        default=None,
        metadata={"help": "clip-retrieval embedding folder with the images' embeddings (computed elsewhere)"},
    )
