"""``python -m evaluation.attack``: the Ring-A-Bell attack (:mod:`evaluation.ringabell`) as a resumable stage.

The concept vector comes from prompt pairs with and without the concept: a CoProV2 dataset's unsafe and safe
prompts of one category (exactly such pairs), or a CSV of pairs (Ring-A-Bell's ``prompt,prompt1`` layout, or
``unsafe_prompt,safe_prompt``). The targets are a prompt set (default: the category's test prompts of the same
dataset, or the CSV's prompts with the concept). The stage writes one adversarial prompt per target, sharded
and resumable like every stage (a shard's targets are committed one at a time), then ``attack.csv`` in the
layout of Ring-A-Bell's released files, ``prompt,case_number,evaluation_seed``, plus ``category``, which
``python -m evaluation --prompts attack.csv --attack ringabell`` evaluates as an attack (its IP is the attack
success rate, ASR). Each target's search has its own seed, so sharding does not change the prompts.

    python -m evaluation.attack --pairs coprov2-out/dataset --category violence --output_dir attacks/violence
    python -m evaluation.attack --pairs Violence_30.csv --category violence --targets i2p.csv --eta 5.5 --length 38
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from cards.public import public_name
from coprov2.cli import DataclassArgumentParser
from coprov2.errors import UserError, check_ranges, run_cli
from coprov2.executor import Stage, run_stage
from coprov2.paths import check_hub_access, check_writable_dir
from coprov2.seeds import derive_seed
from coprov2.stage_io import ShardWriter, StageDir, atomic_write_text, file_sha256
from coprov2.tiny import resolve_tiny_model
from dpo.families import family_of
from evaluation.prompt_sets import read_prompt_set
from evaluation.provenance import ATTACK_RECORD
from evaluation.ringabell import (
    SearchSettings,
    SearchSpace,
    concept_vector,
    encoder_of,
    prompt_space,
    search,
    token_space,
)

logger = logging.getLogger(__name__)

ATTACK_NAME = "ringabell"
ATTACK_CSV = "attack.csv"
#: The column names of Ring-A-Bell's released files, then ours.
CSV_COLUMNS = ("prompt", "case_number", "evaluation_seed", "category")
#: Pair columns of a CSV: Ring-A-Bell's (``Violence_30.csv``), then CoProV2's names.
PAIR_COLUMNS = (("prompt", "prompt1"), ("unsafe_prompt", "safe_prompt"))
SCHEMA = pa.schema([
    ("case_number", pa.int64()), ("prompt", pa.string()), ("evaluation_seed", pa.int64()),
    ("category", pa.string()), ("target_id", pa.string()), ("loss", pa.float64()),
])  # fmt: skip


@dataclass
class AttackConfig:
    """One Ring-A-Bell attack on the prompt embeddings a base's denoiser reads (the search settings are the authors'
    defaults)."""

    pairs: str = field(default="", metadata={"help": "prompt pairs with/without the concept: a CoProV2 dataset "
                       "(folder or Hub id; its unsafe/safe prompts of --category) or a CSV (prompt,prompt1 or "
                       "unsafe_prompt,safe_prompt)"})  # fmt: skip
    category: str = field(
        default="", metadata={"help": "the category attacked (a CoProV2 config of --pairs)"}
    )
    output_dir: str = field(
        default="attack-out", metadata={"help": "where the stage and attack.csv are written"}
    )
    targets: str | None = field(default=None, metadata={"help": "prompt set to attack (default: the category's "
                                "test prompts of --pairs (its train prompts if it has none), or the CSV's prompts "
                                "with the concept)"})  # fmt: skip
    targets_split: str = field(default="test", metadata={"help": "split of a dataset prompt set of targets"})
    pairs_split: str = field(default="train", metadata={"help": "split of a dataset --pairs"})
    max_targets: int | None = field(default=None, metadata={"help": "attack only the first N targets"})
    max_pairs: int | None = field(default=None, metadata={"help": "use only the first N pairs"})
    base: str = field(default="CompVis/stable-diffusion-v1-4",
                      metadata={"help": "pipeline whose prompt embeddings are attacked (Ring-A-Bell's: SD v1.4): "
                                "SD1.x/2.x's CLIP; SDXL's, SD3's and FLUX's encode_prompt output"})  # fmt: skip
    revision: str | None = field(default=None, metadata={"help": "revision of --base"})
    max_sequence_length: int | None = field(default=None, metadata={"help": "SD3/FLUX: T5's length in the "
                                            "attacked embeddings (default: the pipeline's own, as the evaluation "
                                            "renders)"})  # fmt: skip
    eta: float = field(default=3.0, metadata={"help": "strength of the concept vector added to each target"})
    length: int = field(default=16, metadata={"help": "K, the prompt length in tokens (K=77: 75)"})
    population: int = field(default=200, metadata={"help": "genetic algorithm population"})
    generations: int = field(default=3000, metadata={"help": "genetic algorithm generations"})
    mutation_rate: float = field(
        default=0.25, metadata={"help": "share of the population mutated per generation"}
    )
    crossover_rate: float = field(default=0.5, metadata={"help": "share of kept prompts that breed"})
    banned_words: list[str] = field(default_factory=list, metadata={"help": "words no adversarial prompt may "
                                    "contain (case-insensitive), to get past a keyword filter too"})  # fmt: skip
    fitness_batch: int | None = field(default=None, metadata={"help": "candidates per text-encoder call "
                                      "(default: the whole population)"})  # fmt: skip
    shard_targets: int = field(default=8, metadata={"help": "targets per shard"})
    seed: int = field(default=0, metadata={"help": "run seed; each target's search has its own seed from it"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available)"})
    cache_dir: str = field(default=".cache/alignguard", metadata={"help": "where tiny models are written"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    wait_for_lock: bool = field(default=False, metadata={"help": "wait for another run on --output_dir"})

    def __post_init__(self) -> None:
        if not self.pairs:
            raise UserError("--pairs is required: a CoProV2 dataset or a CSV of prompt pairs")
        if not self.category:
            raise UserError("--category is required: the category whose concept is attacked")
        check_ranges(self, {"eta": (None, None, False), "length": (1, None, False), "population": (2, None, False),
                            "generations": (1, None, False), "mutation_rate": (0, 1, False),
                            "crossover_rate": (0, 1, False), "shard_targets": (1, None, False),
                            "max_targets": (1, None, False), "max_pairs": (1, None, False),
                            "fitness_batch": (1, None, False),
                            "max_sequence_length": (1, None, False)})  # fmt: skip
        if any(not isinstance(v, int) for v in (self.length, self.population, self.generations)):
            raise UserError("--length, --population and --generations must be whole numbers")

    @property
    def settings(self) -> SearchSettings:
        return SearchSettings(self.length, self.population, self.generations, self.mutation_rate,
                              self.crossover_rate, self.fitness_batch)  # fmt: skip


def read_pairs(config: AttackConfig) -> tuple[list[str], list[str]]:
    """The prompts with and without the concept, pair by pair; a one-sided or empty set is refused."""
    source = config.pairs
    if source.endswith(".csv"):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"--pairs {source}: no such file")
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = next((c for c in PAIR_COLUMNS if set(c) <= set(reader.fieldnames or ())), None)
            if columns is None:
                raise UserError(
                    f"--pairs {source}: needs the columns prompt,prompt1 (Ring-A-Bell's) or unsafe_prompt,safe_prompt; "
                    f"it has {', '.join(reader.fieldnames or ()) or 'none'}"
                )
            rows = [(r[columns[0]], r[columns[1]]) for r in reader]
    else:
        data = _category_rows(source, config.category, config.pairs_split)
        rows = [(r["unsafe_prompt"], r["safe_prompt"]) for r in data]
    rows = rows[: config.max_pairs]
    one_sided = [i for i, (a, b) in enumerate(rows) if not (a or "").strip() or not (b or "").strip()]
    if not rows or one_sided:
        raise UserError(
            f"--pairs {source}: " + (f"row {one_sided[0]} has a prompt on one side only; every pair needs both"
                                     if rows else "no pairs; the concept vector needs at least one")
        )  # fmt: skip
    if all(a == b for a, b in rows):
        raise UserError(f"--pairs {source}: every pair has the same prompt on both sides, so the concept vector "
                        "is 0; give pairs that differ by the concept")  # fmt: skip
    return [a for a, _ in rows], [b for _, b in rows]


def _category_rows(source: str, category: str, split: str) -> list[dict[str, Any]]:
    """The rows of ``category`` in a CoProV2 dataset: its config of that name (as the builder exports), or
    else the rows of the default config whose ``category`` names it; an unknown category is refused, named."""
    import datasets

    from evaluation.metrics.ip import categories_of

    if not Path(source).exists():
        check_hub_access(source, "--pairs", repo_type="dataset", filename="README.md")
    try:
        configs = datasets.get_dataset_config_names(source)
        if category in configs:
            return list(datasets.load_dataset(source, category, split=split))
        data = datasets.load_dataset(source, split=split)
    except ValueError as error:  # an unknown split: datasets names the ones there are
        raise UserError(f"--pairs {source}: {str(error)[:300]}") from None
    rows = [row for row in data if category in categories_of(row.get("category") or "")]
    if not rows:
        known = sorted({c for value in data["category"] for c in categories_of(value or "")})
        raise UserError(
            f"--category {category}: {source} ({split}) has no such category; it has {', '.join(known)}"
        )
    return rows


def read_targets(config: AttackConfig, with_concept: list[str]) -> list[dict[str, Any]]:
    if config.targets:
        rows = list(read_prompt_set(config.targets, None, config.targets_split, config.max_targets))
    elif config.pairs.endswith(".csv"):
        rows = [{"id": f"{i:07d}", "prompt": p, "seed": None} for i, p in enumerate(with_concept)]
    else:
        try:
            data = _category_rows(config.pairs, config.category, config.targets_split)
        except UserError:  # the pairs were read already, so the category exists: it has no such split
            logger.warning("%s has no %s prompts of %s; attacking its %s prompts", config.pairs,
                           config.targets_split, config.category, config.pairs_split)  # fmt: skip
            data = _category_rows(config.pairs, config.category, config.pairs_split)
        rows = [{"id": r["id"], "prompt": r["unsafe_prompt"], "seed": None} for r in data]
    rows = rows[: config.max_targets]
    if not rows:
        raise UserError(f"no targets to attack (--targets {config.targets or config.pairs})")
    return rows


class AttackStage(Stage):
    """One adversarial prompt per target; the encoders and the concept vector are loaded once per process."""

    name = "attack"
    schema = SCHEMA
    OUTPUT_NEUTRAL = frozenset({"output_dir", "progress", "wait_for_lock", "device", "cache_dir", "shard_targets",
                                "fitness_batch"})  # fmt: skip

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.with_concept, self.without_concept = read_pairs(config)
        self.targets = read_targets(config, self.with_concept)

    def num_shards(self, root: Path) -> int:
        return math.ceil(len(self.targets) / self.config.shard_targets)

    def inputs(self, root: Path) -> dict[str, Any]:
        files = {"pairs": self.config.pairs, "targets": self.config.targets}
        return {f"{k}_sha256": file_sha256(Path(v)) for k, v in files.items() if v and Path(v).is_file()}

    @cached_property
    def space(self) -> tuple[SearchSpace, torch.Tensor]:
        """The space the base's denoiser reads (its family says which) and the concept vector in it."""
        c = self.config
        device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        space = attack_space(resolve_tiny_model(c.base, Path(c.cache_dir) / "tiny-models"), c.revision, device,
                             c.max_sequence_length)  # fmt: skip
        return space, concept_vector(space, self.with_concept, self.without_concept)

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        c = self.config
        space, vector = self.space
        start = index * c.shard_targets
        for number, target in enumerate(self.targets[start : start + c.shard_targets]):
            if number < writer.committed:
                continue
            embedding = space.encode_prompts([target["prompt"]])[0] + c.eta * vector
            generator = torch.Generator().manual_seed(derive_seed(c.seed, "ringabell", target["id"]))
            tokens, loss = search(space, embedding, c.settings, generator, c.banned_words)
            seed = (
                target["seed"]
                if target.get("seed") is not None
                else derive_seed(c.seed, "eval", target["id"])
            )
            writer.commit([{"case_number": start + number, "prompt": space.vocabulary.decode(tokens),
                            "evaluation_seed": seed, "category": c.category, "target_id": str(target["id"]),
                            "loss": loss}])  # fmt: skip

    def summarize(self, stage_dir: StageDir) -> dict[str, Any]:
        losses = [row["loss"] for row in stage_dir.iter_rows(columns=["loss"])]
        return {"search": {"targets": len(losses), "mean_loss": sum(losses) / len(losses),
                           "embeddings": self.space[0].states}}  # fmt: skip


def attack_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as ``attack.csv`` text. Every prompt is quoted: a search can pick tokens that decode to control
    characters such as a bare carriage return, which an unquoted field would turn into a row break."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC,
                            extrasaction="ignore")  # fmt: skip
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_attack_csv(root: Path, config: AttackConfig) -> Path:
    """``attack.csv`` from the finished stage, in case order (Ring-A-Bell's layout plus ``category``), and beside it
    ``attack.json``: what made the prompts, for the reports that evaluate them (public names only)."""
    stage = StageDir.finished(root, AttackStage.name)
    rows = sorted(stage.iter_rows(columns=list(CSV_COLUMNS)), key=lambda r: r["case_number"])
    search = stage.read_manifest()["search"]
    record = {
        "attack": ATTACK_NAME, "base": public_name(config.base), "embeddings": search.get("embeddings", "not recorded"),
        "eta": config.eta, "length": config.length, "population": config.population,
        "generations": config.generations, "pairs": public_name(config.pairs),
        "targets": public_name(config.targets) if config.targets else
        f"the {config.targets_split} prompts of {public_name(config.pairs)}",
        "target_count": search["targets"], "categories": [config.category],
    }  # fmt: skip
    atomic_write_text(root / ATTACK_RECORD, json.dumps(record, indent=2) + "\n")
    path = root / ATTACK_CSV
    atomic_write_text(path, attack_csv_text(rows))
    return path


def attack_space(
    base: str, revision: str | None, device: torch.device, max_sequence_length: int | None
) -> SearchSpace:
    """Where the search runs for ``base``: its family (``dpo/families``; an unknown one is one line) says which
    embeddings its denoiser reads. SD1.x/2.x read one CLIP's token states unchanged: the authors' search over that
    encoder's ids. SDXL, SD3 and FLUX read what their pipeline's ``encode_prompt`` joins (T5's states for FLUX;
    both CLIPs' joined with T5's for SD3), at T5's ``max_sequence_length`` (default: the pipeline's own, as
    ``python -m evaluation`` renders): the search runs in that output, its vocabulary the family's tokenizer."""
    from dpo.config import DPOConfig
    from dpo.families import family_of
    from dpo.trainer import load_encoder_pipeline

    family = family_of(base, revision)
    pipe = load_encoder_pipeline(base, revision, device, family)
    length = max_sequence_length or _default_sequence_length(pipe)
    options = {"max_sequence_length": length} if "max_sequence_length" in family.options else {}
    family = family.configure(pipe.vae.config, DPOConfig(**options))
    encoder = family.direct_text_encoder(pipe)
    if encoder is not None:
        return token_space(pipe.tokenizer, encoder_of(encoder.eval()),
                           f"{type(encoder).__name__} last hidden states (text_encoder/)")  # fmt: skip

    def encode_prompts(prompts: list[str]) -> torch.Tensor:
        return family.encode_text(pipe, list(prompts), device)[0].float()

    tokenizer = family.search_tokenizer(pipe)
    return prompt_space(tokenizer, encode_prompts,
                        f"{type(pipe).__name__}.encode_prompt's prompt_embeds ({family.token_states}"
                        f"{f', T5 length {length}' if options else ''}), candidates from {type(tokenizer).__name__}")  # fmt: skip


def _default_sequence_length(pipe) -> int | None:
    """The T5 length the pipeline renders with when not told (SD3: 256, FLUX: 512); None for pipelines without."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
    return None if parameter is None else parameter.default


def attack(config: AttackConfig) -> Path:
    """Run the attack (resuming a stopped one) and write ``attack.csv``; returns its path."""
    if not config.base.startswith("tiny:"):
        check_hub_access(config.base, "--base", config.revision)
    stage = AttackStage(config)  # reads and checks the pairs and targets before anything is written
    family_of(resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models"), config.revision)
    check_writable_dir(config.output_dir, "--output_dir")
    root = Path(config.output_dir)
    run_stage(stage, root, config.progress, config.wait_for_lock)
    return write_attack_csv(root, config)


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        AttackConfig, prog="python -m evaluation.attack",
        description="Ring-A-Bell: adversarial prompts for a category, found with the base's text encoders alone "
        "(concept vector from prompt pairs, genetic search of K-token prompts). Writes attack.csv "
        "(prompt,case_number,evaluation_seed,category); evaluate it with python -m evaluation --prompts "
        "attack.csv --attack ringabell.",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        (config,) = make_parser().parse_args_into_dataclasses(args=argv)
        print(f"attack: {attack(config)}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
