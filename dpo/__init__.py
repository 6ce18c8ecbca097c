"""Diffusion-DPO LoRA safety experts, one per CoProV2 harm category (``python -m dpo.train``)."""

from dpo.config import DPOConfig
from dpo.trainer import ExpertResult, train_expert
from dpo.trainer import train as train_experts  # not ``dpo.train``: that name is the CLI module's

__all__ = ["DPOConfig", "ExpertResult", "train_expert", "train_experts"]
