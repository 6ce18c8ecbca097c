"""Merging LoRA safety experts into one: Co-Merge and the usual baselines (``python -m merge``)."""

from merge.experts import Expert, LoraLayer, load_expert
from merge.methods import METHODS, merge_experts
from merge.run import MergeConfig, run_merge

__all__ = ["METHODS", "Expert", "LoraLayer", "MergeConfig", "load_expert", "merge_experts", "run_merge"]
