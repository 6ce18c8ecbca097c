"""The toy world of the known-answer tests (``dpo/toy.py``): one concept, a base pretrained to render
both of its colours, and experts trained with the known-answer settings."""

from pathlib import Path

from dpo import DPOConfig, train_expert
from dpo.toy import TOY_RESOLUTION, pretrain_toy_base, toy_concepts, write_toy_dataset


def make_toy_world(root: Path):
    """``(root, concept, base folder, dataset folder)``; the base pretraining is the slow part (minutes)."""
    from coprov2.tiny import resolve_tiny_model

    concepts = toy_concepts(1)
    base = pretrain_toy_base(resolve_tiny_model("tiny:sd15", root / "tiny"), root / "base", concepts)
    return root, concepts[0], base, write_toy_dataset(root / "data", concepts)


def train_toy_expert(root: Path, concept, base: Path, data: Path, name: str, steps: int = 300, seed: int = 0):
    config = DPOConfig(
        dataset=str(data), category=concept.name, base=str(base), output_dir=str(root / name), cache_dir=str(root / "cache"),
        resolution=TOY_RESOLUTION, max_train_steps=steps, train_batch_size=8, gradient_accumulation_steps=1,
        lr_warmup_steps=0, learning_rate=3e-3, scale_lr=False, timestep_min=500, beta=5000,
        proportion_empty_prompts=0.0, checkpointing_steps=1000, logging_steps=50, progress=False, seed=seed,
    )  # fmt: skip
    return train_expert(config)
