"""Diffusion-DPO LoRA safety experts, one per CoProV2 harm category (``python -m dpo.train``)."""

from dpo.config import DPOConfig
from dpo.trainer import ExpertResult, train, train_expert

__all__ = ["DPOConfig", "ExpertResult", "train", "train_expert"]
