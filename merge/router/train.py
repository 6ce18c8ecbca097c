"""``train_router``: a CoProV2 dataset in, a :class:`ConceptRouter` with its card and summary out."""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cards.public import public_name, public_settings
from cards.push import push_folder
from cards.router_card import router_card
from coprov2.errors import UserError
from coprov2.paths import check_hub_access, check_writable_dir
from coprov2.tiny import resolve_tiny_model
from dpo.families import Family, family_of
from dpo.trainer import load_encoder_pipeline
from merge.router.config import RouterConfig
from merge.router.data import (
    Examples,
    categories_of,
    examples,
    neutral_prompts,
    read_rows,
    split_for_calibration,
)
from merge.router.features import PROBES, cached_features, encoder_key, pipeline_family
from merge.router.metrics import best_f1_threshold, routing_metrics
from merge.router.model import ConceptRouter

logger = logging.getLogger(__name__)

#: Share of the neutral list kept out of training and calibration, for the card's false-positive rate.
NEUTRAL_EVAL_SHARE = 0.25


def fit_head(router: ConceptRouter, features: torch.Tensor, data: Examples, config: RouterConfig) -> None:
    """Standardise on the training features; prototype: each concept's centroid of its training prompts; linear,
    mlp: full-batch AdamW on one-vs-rest BCE, each category's positives weighted by its negatives/positives (a
    category's prompts are a small share of all), seeded."""
    router.mean.copy_(features.mean(0))
    router.scale.copy_(
        features.std(0).clamp(min=1e-6) if len(features) > 1 else torch.ones(features.shape[1])
    )
    inputs = (features - router.mean) / router.scale
    if router.kind == "prototype":
        for k, concept in enumerate(router.concepts):
            router.centroids[k] = inputs[[c == concept for c in data.concepts]].mean(0)
        return
    if router.kind == "contrastive":
        fit_contrastive(router, inputs, data, config)
        return
    labels = data.labels
    positives = labels.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(labels) - positives) / positives.clamp(min=1))

    def init() -> list[torch.nn.Parameter]:
        for module in router.head.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        return list(router.head.parameters())

    minimise(init, lambda: loss_fn(router.head(inputs), labels), config)


def fit_contrastive(
    router: ConceptRouter, inputs: torch.Tensor, data: Examples, config: RouterConfig
) -> None:
    """InfoNCE (temperature ``config.temperature``) between each prompt's embedding and the concept rows: a
    positive's class is its concept, a negative's the "no concept" row; classes weighted by their inverse counts,
    full-batch AdamW, seeded."""
    index = {concept: k for k, concept in enumerate(router.concepts)}
    targets = torch.tensor([index.get(c, len(router.concepts)) for c in data.concepts])
    counts = torch.bincount(targets, minlength=len(router.concepts) + 1).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / counts.clamp(min=1) / len(counts))

    def init() -> list[torch.nn.Parameter]:
        router.head.reset_parameters()
        torch.nn.init.normal_(router.concept_embeddings)
        return [*router.head.parameters(), router.concept_embeddings]

    def loss() -> torch.Tensor:
        rows = torch.nn.functional.normalize(router.concept_embeddings, dim=1)
        return loss_fn(router.embed(inputs) @ rows.T / config.temperature, targets)

    minimise(init, loss, config)


def minimise(
    init: Callable[[], list[torch.nn.Parameter]], loss: Callable[[], torch.Tensor], config: RouterConfig
) -> None:
    """The learned heads' training: ``init`` (seeded with ``config.seed``, without touching the global generator)
    returns the parameters, then ``config.steps`` full-batch AdamW steps on ``loss``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        optimizer = torch.optim.AdamW(init(), lr=config.learning_rate, weight_decay=config.weight_decay)
        for _ in range(config.steps):
            value = loss()
            optimizer.zero_grad()
            value.backward()
            optimizer.step()


def calibrate(router: ConceptRouter, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Each category's threshold: the best F1 on the held-out prompts (``metrics.best_f1_threshold``)."""
    with torch.no_grad():
        scores = router(features)
    for k in range(len(router.categories)):
        router.thresholds[k] = best_f1_threshold(scores[:, k], labels[:, k].bool())


def _measure(router: ConceptRouter, features: torch.Tensor, data: Examples) -> dict:
    with torch.no_grad():
        chosen = router.decide(router(features))
    return routing_metrics(chosen, data.labels, data.kinds, router.categories)


@dataclass
class RouterData:
    """What a run learns from, read and checked before anything is written."""

    categories: list[str]
    data: Examples
    train_rows: list[int]
    calibration_rows: list[int]
    in_sample: list[str]
    test: Examples
    neutral: int
    held_neutral: int


def read_router_data(config: RouterConfig) -> RouterData:
    """The train split's examples split for calibration, the test split's (with the held-out neutral prompts);
    every bad input is one ``UserError`` here, before any model loads."""
    rows = read_rows(config.dataset, config.dataset_config, "train")
    if rows is None:
        raise UserError(f"--dataset {config.dataset}: no train split; the router learns from the train split")
    categories = categories_of(rows, config.categories, config.dataset)
    neutral = neutral_prompts(config.neutral_prompts)
    if len(neutral) < 4:
        raise UserError(
            f"--neutral_prompts: {len(neutral)} distinct prompt(s); give four or more (training, calibration and "
            "the card's false-positive rate each need some)"
        )
    random.Random(config.seed).shuffle(neutral)
    held_neutral = max(1, round(NEUTRAL_EVAL_SHARE * len(neutral)))
    data = examples(rows, categories, neutral[held_neutral:])
    train_rows, calibration_rows, in_sample = split_for_calibration(
        data, config.calibration_share, config.seed, categories
    )
    if in_sample:
        logger.warning(
            "router: one distinct prompt in %s; its threshold is set on the prompt it learned", in_sample
        )
    test = examples(
        read_rows(config.dataset, config.dataset_config, "test") or [], categories, neutral[:held_neutral]
    )
    return RouterData(
        categories, data, train_rows, calibration_rows, in_sample, test, len(neutral), held_neutral
    )


def encode(config: RouterConfig, prompts: list[str]) -> tuple[torch.Tensor, Family]:
    """The features of ``prompts`` then of the probe prompts (cached, resumable), and the configured family."""
    base = resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family = family_of(base, config.revision)
    pipe = load_encoder_pipeline(base, config.revision, device, family)
    family = pipeline_family(pipe, config.max_sequence_length, family)
    loaded = str(Path(base).resolve()) if Path(base).exists() else base
    features = cached_features(
        pipe, family, [*prompts, *PROBES], encoder_key(loaded, config.revision, family),
        Path(config.cache_dir) / "router-features", config.batch_size, config.progress, device,
    )  # fmt: skip
    return features, family


def train_router(config: RouterConfig) -> dict:
    """Read and check (every bad input before anything is written), encode, fit, calibrate, measure, save, card."""
    check_hub_access(config.base, "--base", config.revision)
    inputs = read_router_data(config)
    check_writable_dir(config.output_dir, "--output_dir")
    data, test = inputs.data, inputs.test
    features, family = encode(config, [*data.prompts, *test.prompts])
    probes, known, unknown = (
        features[len(data) + len(test) :],
        features[: len(data)],
        features[len(data) : len(data) + len(test)],
    )
    training = data.subset(inputs.train_rows)
    router = ConceptRouter(
        inputs.categories, features.shape[1], config.head, config.hidden_size, public_name(config.base), family.name,
        family.settings(), sorted({c for c in training.concepts if c is not None}),
    )  # fmt: skip
    router.probes.copy_(probes)
    fit_head(router, known[inputs.train_rows], training, config)
    calibration_rows = inputs.calibration_rows
    if router.kind == "prototype":  # fitted on positives alone, so every negative is held out from it
        negatives = (r for r in inputs.train_rows if not data.labels[r].any())
        calibration_rows = sorted({*calibration_rows, *negatives})
    calibrate(router, known[calibration_rows], data.labels[calibration_rows])
    summary = {
        "categories": inputs.categories,
        "head": config.head,
        "family": family.name,
        "feature_dim": features.shape[1],
        "in_sample_thresholds": inputs.in_sample,
        "thresholds": dict(
            zip(inputs.categories, (round(t, 6) for t in router.thresholds.tolist()), strict=True)
        ),
        "prompts": {
            "train": len(inputs.train_rows),
            "calibration": len(calibration_rows),
            "test": len(test),
            "neutral_train_and_calibration": inputs.neutral - inputs.held_neutral,
            "neutral_held_out": inputs.held_neutral,
        },
        "train": _measure(router, known[inputs.train_rows], training),
        "calibration": _measure(router, known[calibration_rows], data.subset(calibration_rows)),
        "test": _measure(router, unknown, test),
        "settings": public_settings(
            {k: v for k, v in asdict(config).items() if k not in ("progress", "dry_run", "cache_dir")}
        ),
    }
    save(Path(config.output_dir), router, summary, config)
    if config.push_to_hub:
        push_folder(Path(config.output_dir), config.push_to_hub, repo_type="model", gated=None,
                    public=config.hub_public, dry_run=config.dry_run)  # fmt: skip
    return summary


def save(folder: Path, router: ConceptRouter, summary: dict, config: RouterConfig) -> None:
    """The router, its summary and card, written beside ``folder`` and moved in, ``model.safetensors`` last: a run
    killed while saving leaves no router that looks finished."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as scratch:
        router.save_pretrained(scratch)
        (Path(scratch) / "router_summary.json").write_text(json.dumps(summary, indent=2))
        router_card(config, summary).save(Path(scratch) / "README.md")
        names = sorted(p.name for p in Path(scratch).iterdir())
        for name in sorted(names, key=lambda n: n == "model.safetensors"):
            os.replace(Path(scratch) / name, folder / name)
