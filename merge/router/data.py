"""What a router learns from: a CoProV2 split's unsafe prompts (positives of their category), their safe twins and
a neutral list (positives of none), one example per distinct prompt."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from coprov2.errors import UserError
from coprov2.paths import check_hub_access
from dpo.data import stream_columns
from dpo.retain import NEUTRAL_PROMPTS

COLUMNS = ("unsafe_prompt", "safe_prompt", "category")
#: Examples' kinds, for the rates the card reports.
KINDS = ("unsafe", "safe twin", "neutral")


@dataclass
class Examples:
    """Distinct prompts with their categories (multi-hot ``labels`` ``[P, C]``) and what each one is."""

    prompts: list[str]
    labels: torch.Tensor
    kinds: list[str]
    #: A positive's concept (``category/concept``; the category where the dataset names none), None elsewhere.
    concepts: list[str | None]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: list[int]) -> Examples:
        return Examples(
            [self.prompts[r] for r in rows], self.labels[rows], [self.kinds[r] for r in rows],
            [self.concepts[r] for r in rows],
        )  # fmt: skip

    @staticmethod
    def join(parts: list[Examples]) -> Examples:
        return Examples(
            [p for part in parts for p in part.prompts],
            torch.cat([part.labels for part in parts]),
            [k for part in parts for k in part.kinds],
            [c for part in parts for c in part.concepts],
        )


def read_rows(dataset: str, config: str | None, split: str) -> list[dict[str, str]] | None:
    """The text columns of a CoProV2 split (None when the dataset has no such split); a dataset without them, or
    one that cannot be opened, is one line naming it."""
    if not Path(dataset).exists():
        check_hub_access(dataset, "--dataset", repo_type="dataset", filename="README.md")
    try:
        builder = datasets.load_dataset_builder(dataset, config)
    except (
        FileNotFoundError,
        ConnectionError,
        datasets.exceptions.DatasetNotFoundError,
        ValueError,
    ) as error:
        raise UserError(f"--dataset {dataset}: cannot open it ({type(error).__name__}: {error})") from None
    if split not in (builder.config.data_files or {}):
        return None
    features = datasets.load_dataset(dataset, config, split=split, streaming=True).features or {}
    missing = sorted(set(COLUMNS) - set(features))
    if missing:
        raise UserError(
            f"--dataset {dataset} ({split}): not a CoProV2 dataset, columns {missing} are missing; it has "
            f"{', '.join(features)}"
        )
    return list(
        stream_columns(
            dataset, config, split, [*COLUMNS, *(["concept"] if "concept" in features else [])], builder
        )
    )


def neutral_prompts(path: str | None) -> list[str]:
    """The neutral list (default: the shipped one), distinct lines in file order."""
    source = Path(path) if path else NEUTRAL_PROMPTS
    if not source.is_file():
        raise UserError(f"--neutral_prompts {source}: no such file")
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


def examples(rows: list[dict[str, str]], categories: list[str], neutral: list[str]) -> Examples:
    """One example per distinct prompt: an unsafe prompt is a positive of its category (of several, when
    several categories share it); a safe twin, or a neutral prompt, of none. A twin identical to its unsafe
    prompt (the concept is in the image, not in the words) is no negative, and is left out."""
    index = {category: k for k, category in enumerate(categories)}
    positive: dict[str, set[int]] = defaultdict(set)
    concept: dict[str, str] = {}
    negatives: dict[str, str] = {}
    for row in rows:
        if row["category"] not in index:
            continue
        positive[row["unsafe_prompt"]].add(index[row["category"]])
        concept.setdefault(row["unsafe_prompt"], f"{row['category']}/{row.get('concept') or row['category']}")
        if row["safe_prompt"] and row["safe_prompt"] != row["unsafe_prompt"]:
            negatives.setdefault(row["safe_prompt"], "safe twin")
    for prompt in neutral:
        negatives.setdefault(prompt, "neutral")
    prompts = list(positive) + [p for p in negatives if p not in positive]
    labels = torch.zeros(len(prompts), len(categories))
    for row, prompt in enumerate(prompts[: len(positive)]):
        labels[row, sorted(positive[prompt])] = 1.0
    kinds = ["unsafe"] * len(positive) + [negatives[p] for p in prompts[len(positive) :]]
    return Examples(prompts, labels, kinds, [concept.get(p) for p in prompts])


def categories_of(rows: list[dict[str, str]], requested: list[str], dataset: str) -> list[str]:
    """The categories the router routes: ``requested`` (each must be in the split), else every category of the
    split, sorted; fewer than two is refused (a router chooses among experts)."""
    counts = Counter(row["category"] for row in rows)
    if not counts:
        raise UserError(f"--dataset {dataset}: the train split has no rows; nothing to learn a router from")
    for category in requested:
        if category not in counts:
            raise UserError(
                f"--categories {category}: not a category of --dataset {dataset} (it holds "
                f"{', '.join(sorted(counts))})"
            )
    categories = list(dict.fromkeys(requested)) or sorted(counts)
    if len(categories) < 2:
        raise UserError(
            f"--dataset {dataset}: one category ({categories[0]}); a router chooses among experts, so it needs two "
            "or more: train it on a dataset of several categories, or apply that expert alone (pipe.load_lora_weights)"
        )
    return categories


def split_for_calibration(
    data: Examples, share: float, seed: int, categories: list[str]
) -> tuple[list[int], list[int], list[str]]:
    """Rows to train on, rows to set the thresholds on, and the categories whose threshold is set in-sample: per
    category (and per kind of negative), a seeded ``share`` of its prompts, at least one, held out. A category of
    one distinct prompt (a smoke build's) is both trained and calibrated on it, and named in the third list."""
    generator = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for row in range(len(data)):
        positives = data.labels[row].nonzero().flatten().tolist()
        groups[categories[positives[0]] if positives else data.kinds[row]].append(row)
    train, held, in_sample = [], [], []
    for name in [*categories, "safe twin", "neutral"]:
        rows = groups.get(name, [])
        if name in categories and len(rows) == 1:
            train += rows
            held += rows
            in_sample.append(name)
            continue
        if len(rows) < 2:
            train += rows
            continue
        generator.shuffle(rows)
        count = min(len(rows) - 1, max(1, round(share * len(rows))))
        held += rows[:count]
        train += rows[count:]
    return sorted(train), sorted(held), in_sample
