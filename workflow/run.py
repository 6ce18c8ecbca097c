"""``run_workflow(config)``: the paper's workflow as steps run in order by an executor that knows nothing of them.

Each step is a name, the settings its output depends on (its tool's whole config, plus the fingerprints of
the steps it reads) and a function that runs it. When a step finishes, ``<output_dir>/workflow/<name>.json``
records its fingerprint; a rerun skips every step whose record matches and runs the others, which resume
on their own (the builder's stages, DPO checkpoints, the evaluation's render and score shards). So a kill
at any point loses at most the work in flight, and changing one option reruns only what depends on it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cards.push import push_folder
from coprov2.build import build
from coprov2.dataset.from_release import import_release
from coprov2.paths import check_writable_dir
from coprov2.stage_io import atomic_write_text, file_sha256
from dpo.data import load_preference_pairs
from dpo.trainer import train_expert
from evaluation.attack import ATTACK_CSV, ATTACK_NAME, attack, attack_csv_text
from evaluation.provenance import ATTACK_RECORD
from evaluation.run import evaluate
from merge.router import train_router
from merge.run import run_merge
from workflow.config import WorkflowConfig

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One unit of the workflow: ``run`` returns a JSON-able summary, kept in the step's record."""

    name: str
    settings: dict[str, Any]
    run: Callable[[], dict[str, Any]]
    #: A step with outside effects only (a dry-run push) is never recorded as done.
    record: bool = True

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _settings(config: Any, *inputs: Step) -> dict[str, Any]:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
    return {**values, "inputs": {step.name: step.fingerprint for step in inputs}}


def run_steps(steps: Iterator[Step], root: Path) -> dict[str, Any]:
    """Run or skip each step of ``steps`` (a generator: later steps may depend on earlier outputs)."""
    records: dict[str, Any] = {}
    for step in steps:
        path = root / "workflow" / f"{step.name.replace('/', '--')}.json"
        done = json.loads(path.read_text()) if path.is_file() else None
        if done and done["fingerprint"] == step.fingerprint:
            logger.info("workflow: %s already done (%s), skipped", step.name, path)
            records[step.name] = {**done, "skipped": True}
            continue
        logger.info("workflow: %s ...", step.name)
        start = time.monotonic()
        summary = step.run()
        record = {"step": step.name, "fingerprint": step.fingerprint, "seconds": round(time.monotonic() - start, 1),
                  "summary": summary}  # fmt: skip
        if step.record:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
        records[step.name] = record
        logger.info("workflow: %s done in %.1f s", step.name, record["seconds"])
    return records


def _dataset_step(config: WorkflowConfig) -> Step:
    if config.build is not None:
        build_config = config.build_config()
        return Step(
            "dataset", _settings(build_config), lambda: {"rows": build(build_config)["dataset"]["rows_total"]}
        )
    if config.release is not None:
        release = config.release
        csvs = {
            "train": Path(release["train_csv"]),
            **({"test": Path(release["test_csv"])} if release.get("test_csv") else {}),
        }

        def run() -> dict[str, Any]:
            return {
                "rows": import_release(csvs, Path(release["images"]), Path(config.dataset_path))["rows_total"]
            }

        digests = {split: file_sha256(path) for split, path in csvs.items() if path.is_file()}
        return Step("dataset", {**release, "sha256": digests, "output": config.dataset_path}, run)
    card = Path(config.dataset_path) / "README.md"  # a local folder rewritten in place changes its card
    digest = file_sha256(card) if card.is_file() else None
    return Step("dataset", {"dataset": config.dataset_path, "card_sha256": digest}, lambda: {}, record=False)


def workflow_steps(config: WorkflowConfig) -> Iterator[Step]:
    """The steps, in order; categories are known once the dataset exists."""
    dataset = _dataset_step(config)
    yield dataset
    categories = config.categories
    if categories == "each":
        categories = sorted(set(load_preference_pairs(config.dataset_path, None, "train").categories))
    experts: dict[str, Step] = {}
    for category in categories:
        dpo_config = config.dpo_config(category)
        experts[category] = Step(
            f"experts/{category}",
            _settings(dpo_config, dataset),
            lambda c=category, d=dpo_config: {"metrics": train_expert(d, c).metrics},
        )
        yield experts[category]
    loras = [f"{category}={config.root / 'experts' / category}" for category in categories]
    merged: list[Step] = []
    if len(categories) > 1:
        merge_config = config.merge_config([str(config.root / "experts" / c) for c in categories])
        merged = [Step("merge", _settings(merge_config, *experts.values()), lambda: run_merge(merge_config))]
        yield merged[0]
        loras.append(f"merged={config.root / 'merged'}")
    else:
        logger.info("workflow: one category, nothing to merge")
    router = None  # the router's folder, when the recipe routes
    if config.route is not None and len(categories) > 1:
        router_config = config.router_config(list(categories))
        merged.append(Step("route", _settings(router_config, dataset), lambda: train_router(router_config)))
        yield merged[-1]
        router = router_config.output_dir
    evaluations = []
    for name, prompts in {"test": config.dataset_path, **config.extra_prompt_sets}.items():
        eval_config = config.eval_config(prompts, loras, name, router=router)
        evaluations.append(
            Step(
                f"eval-{name}",
                _settings(eval_config, dataset, *experts.values(), *merged),
                lambda e=eval_config: {"models": evaluate(e)["models"]},
            )
        )
        yield evaluations[-1]
    if config.redteam is not None:
        evaluations.append(
            (
                yield from _redteam_steps(
                    config, categories, loras, [dataset, *experts.values(), *merged], router
                )
            )
        )
    pushes = []
    if config.push_experts:
        pushes = [(config.push_experts.format(category=c), config.root / "experts" / c) for c in categories]
    if config.push_merged and len(categories) > 1:
        pushes.append((config.push_merged, config.root / "merged"))
    if config.push_router and router:
        pushes.append((config.push_router, config.root / "router"))
    if pushes:

        def push() -> dict[str, Any]:
            for repo, folder in pushes:
                push_folder(
                    folder,
                    repo,
                    repo_type="model",
                    gated=None,
                    public=config.hub_public,
                    dry_run=config.dry_run,
                    ignore=("checkpoints",),  # as dpo.train's own push: training state stays local
                )
            return {"repos": [repo for repo, _ in pushes]}

        settings = {
            "repos": [repo for repo, _ in pushes],
            "public": config.hub_public,
            "dry_run": config.dry_run,
        }
        yield Step(
            "push",
            {**settings, "inputs": {s.name: s.fingerprint for s in evaluations}},
            push,
            record=not config.dry_run,
        )


def _redteam_steps(
    config: WorkflowConfig, categories: list[str], loras: list[str], inputs: list[Step], router: str | None
) -> Iterator[Step]:
    """Ring-A-Bell per category against the base's text encoder, then every model's ASR on all the prompts;
    returns the evaluation step."""
    attacks = []
    for category in categories:
        attack_config = config.attack_config(category)
        attacks.append(Step(f"redteam/{category}", _settings(attack_config, inputs[0]),
                            lambda a=attack_config: {"csv": str(attack(a))}))  # fmt: skip
        yield attacks[-1]
    combined = config.root / "redteam" / ATTACK_CSV
    eval_config = dataclasses.replace(
        config.eval_config(str(combined), loras, "redteam", router=router), attack=ATTACK_NAME
    )

    def run() -> dict[str, Any]:
        rows = []
        for category in categories:
            with (config.root / "redteam" / category / ATTACK_CSV).open(
                newline="", encoding="utf-8"
            ) as handle:
                rows += list(csv.DictReader(handle))
        numbered = ({**row, "case_number": number, "evaluation_seed": int(row["evaluation_seed"])}
                    for number, row in enumerate(rows))  # fmt: skip
        atomic_write_text(combined, attack_csv_text(numbered))
        atomic_write_text(
            combined.with_name(ATTACK_RECORD),
            json.dumps(combined_record(config, categories), indent=2) + "\n",
        )
        return {"models": {label: m.get("asr") for label, m in evaluate(eval_config)["models"].items()}}

    step = Step("eval-redteam", _settings(eval_config, *inputs, *attacks), run)
    yield step
    return step


def combined_record(config: WorkflowConfig, categories: list[str]) -> dict[str, Any] | None:
    """The attack record of the combined ``redteam/attack.csv``: the per-category records' settings, every
    category, every target (None where the attacks ran before they wrote records)."""
    paths = [config.root / "redteam" / c / ATTACK_RECORD for c in categories]
    if not all(path.is_file() for path in paths):
        return None
    records = [json.loads(path.read_text()) for path in paths]
    return {**records[0], "categories": categories, "target_count": sum(r["target_count"] for r in records)}


def run_workflow(config: WorkflowConfig) -> dict[str, Any]:
    """Run (or resume) every step of ``config``; returns each step's record, and writes it to ``workflow/summary.json``."""
    config.check_models()  # before output_dir is made: a refused recipe leaves nothing behind
    check_writable_dir(config.output_dir, "output_dir")
    records = run_steps(workflow_steps(config), config.root)
    (config.root / "workflow").mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        config.root / "workflow" / "summary.json", json.dumps(records, indent=2, default=str) + "\n"
    )
    return records
