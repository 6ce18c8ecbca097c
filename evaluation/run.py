"""``evaluate(config)``: prompt set -> images per model -> scores -> report (+ model cards), resumable.

Every input is checked before the first image is rendered (prompt columns, LoRA bases, detectors, the
FID reference), so a bad one costs nothing and leaves nothing half-written. The stages are the
builder's (``coprov2.executor``): rerun the same command after an interruption and only what is
missing is done; under ``accelerate launch`` the shards are split over the processes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from cards.eval_results import eval_results, write_eval_results
from coprov2.errors import UserError
from coprov2.executor import distributed_state, run_stage
from coprov2.paths import check_hub_access, check_writable_dir
from coprov2.stage_io import StageDir
from coprov2.tiny import resolve_tiny_model
from dpo.families import check_sizes
from evaluation.config import EvalConfig
from evaluation.metrics.clipscore import shared_embedder
from evaluation.metrics.fid import image_files, load_extractor, reference_stats, warn_small
from evaluation.metrics.ip import load_detector
from evaluation.prompt_sets import read_prompt_set
from evaluation.provenance import describe_prompts
from evaluation.published_sets import PUBLISHED_SETS, PublishedSet, resolve_published
from evaluation.render import FolderStage, PromptSetConfig, PromptSetStage, RenderSettings, RenderStage
from evaluation.report import write_report
from evaluation.score import Scorers, ScoreSettings, ScoreStage

logger = logging.getLogger(__name__)


def _label(spec: str, option: str) -> tuple[str, str]:
    """``NAME=SOURCE`` or ``SOURCE`` (named after its last path part) -> (label, source)."""
    name, sep, source = spec.partition("=")
    if not sep:
        source, name = spec, Path(spec.rstrip("/")).name.removesuffix(".safetensors")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(
            f"{option} {spec}: name {name!r} must be letters, digits, '.', '_' or '-' (use NAME=SOURCE)"
        )
    return name, source


def models_of(config: EvalConfig) -> list[tuple[str, str | None, str | None]]:
    """``(label, lora or None, image folder or None)`` per evaluated model, base first."""
    models = [] if config.no_base else [("base", None, None)]
    models += [(label, source, None) for label, source in map(lambda s: _label(s, "--loras"), config.loras)]
    models += [
        (label, None, folder)
        for label, folder in map(lambda s: _label(s, "--image_folders"), config.image_folders)
    ]
    if config.router:
        models.append((ROUTED, None, None))
    labels = [m[0] for m in models]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(f"two evaluated models are named {label!r}; name them with NAME=SOURCE")
    if not models:
        raise UserError("nothing to evaluate: --no_base without --loras or --image_folders")
    return models


#: The label of the routed model (``--router``).
ROUTED = "routed"


def router_experts(config: EvalConfig, router) -> dict[str, str]:
    """The routed model's experts, category -> source: ``--router_experts``, else the ``--loras`` named by
    ``router``'s categories; a category without one is one line naming the flags."""
    if config.router_experts:
        experts = dict(_label(spec, "--router_experts") for spec in config.router_experts)
    else:
        loras = dict(_label(spec, "--loras") for spec in config.loras)
        experts = {c: loras[c] for c in router.categories if c in loras}
    missing = [c for c in router.categories if c not in experts]
    if missing:
        raise UserError(
            f"--router {config.router} routes {', '.join(router.categories)}; no expert for {', '.join(missing)}: give "
            "--router_experts CATEGORY=SOURCE (or --loras named by the categories)"
        )
    return experts


def load_router(source: str):
    """The router at ``source`` (folder or Hub id); one that cannot be read is one line naming it."""
    from merge.router import ConceptRouter

    if not Path(source).exists():
        check_hub_access(source, "--router", filename="config.json")
    try:
        return ConceptRouter.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"--router {source}: not a concept router ({type(error).__name__}: {str(error)[:200]})"
        ) from None


def check_router(config: EvalConfig, base: str, loras: set[str]) -> None:
    """Before any image: the router's experts are its categories', it reads the base's text encoder, and its
    experts fit the base (those not among ``loras``, which are checked with them)."""
    from dpo.families import family_of
    from dpo.trainer import load_encoder_pipeline
    from merge.experts import check_compatible, load_expert
    from merge.router import RoutedPipeline

    router = load_router(config.router)
    experts = router_experts(config, router)
    RoutedPipeline.check_categories(router, experts, f"--router {config.router}")
    family = family_of(base)
    router.check_pipeline(
        load_encoder_pipeline(base, None, "cpu", family), f"--router {config.router}", family
    )
    for source in sorted(set(experts.values()) - loras):
        check_compatible([load_expert(source)], config.base)


def scorer_models(config: EvalConfig) -> list[tuple[str, str]]:
    """``(option, id)`` of each model the metrics load: CLIPScore's CLIP, and Q16's unless ``--q16_csv`` gives its
    verdicts."""
    models = [("clip_model", config.clip_model)] if "clipscore" in config.metrics else []
    if "ip" in config.metrics and "q16" in config.ip_detectors and not config.q16_csv:
        models.append(("q16_clip_model", config.q16_clip_model))
    return models


def check_inputs(config: EvalConfig, models: list[tuple[str, str | None, str | None]]) -> None:
    """Everything that can be checked before work starts, each error naming its input."""
    from merge.experts import check_compatible, load_expert

    if any(folder is None for _, _, folder in models):
        check_hub_access(config.base, "--base")
        base = resolve_tiny_model(config.base, Path(config.cache_dir) / "tiny-models")
        check_sizes(base, None, {"--height": config.height, "--width": config.width}, name=config.base)
    if config.prompts:
        read_prompt_set(config.prompts, config.prompts_config, config.prompts_split)
    if config.router:
        check_router(config, base, {lora for _, lora, _ in models if lora})
    for _, lora, folder in models:
        if lora:
            check_compatible([load_expert(lora)], config.base)
        if folder and not Path(folder).is_dir():
            raise UserError(f"--image_folders {folder}: no such folder")
    if "fid" in config.metrics and Path(config.fid_reference).suffix != ".npz":
        image_files(config.fid_reference, "--fid_reference")
    carded = set(card_labels(config, models))
    for folder in config.update_card:
        if Path(folder).resolve() not in carded:
            raise UserError(
                f"--update_card {folder}: not one of the --loras (or --router) folders evaluated in this run"
            )
    for option, name in scorer_models(config):  # after the local files: cheaper to fix first
        check_hub_access(name, f"--{option}", filename="config.json")
    check_writable_dir(config.output_dir, "--output_dir")  # last: a refused run leaves no folder behind


def card_labels(config: EvalConfig, models: list[tuple[str, str | None, str | None]]) -> dict[Path, str]:
    """The folders whose card can take this run's results, and the model each one is: the ``--loras`` folders and a
    ``--router`` folder (the routed model's results go into the router's card)."""
    labels = {Path(lora).resolve(): label for label, lora, _ in models if lora and Path(lora).is_dir()}
    if config.router and Path(config.router).is_dir():
        labels[Path(config.router).resolve()] = ROUTED
    return labels


def build_scorers(config: EvalConfig, resolve: Any) -> Scorers:
    """Load the detectors, CLIP and feature extractor the metrics need, and the FID reference statistics."""
    resolved = dataclasses.replace(
        config, q16_clip_model=resolve(config.q16_clip_model), clip_model=resolve(config.clip_model)
    )
    detectors = (
        [load_detector(spec, resolved) for spec in config.ip_detectors] if "ip" in config.metrics else []
    )
    clip = (
        shared_embedder(resolved.clip_model, config.score_batch_size)
        if "clipscore" in config.metrics
        else None
    )
    extractor = reference = None
    if "fid" in config.metrics:
        extractor = load_extractor(config.fid_features, distributed_state().device, resolved)
        reference = reference_stats(
            config.fid_reference,
            extractor,
            config.score_batch_size,
            Path(config.output_dir) / "fid-reference",
        )
        warn_small(reference[2], "reference")
    return Scorers(detectors, clip, extractor, reference)


def resolve_prompts(config: EvalConfig) -> tuple[EvalConfig, PublishedSet | None]:
    """``config`` with a published set's name replaced by its local file (fetched once) and its attack named;
    and the published set (None for any other prompt set)."""
    if config.prompts not in PUBLISHED_SETS or Path(config.prompts).exists():
        return config, None
    source, published = resolve_published(config.prompts, config.cache_dir)
    return dataclasses.replace(config, prompts=source, attack=config.attack or published.attack), published


def attack_success(ip: dict[str, Any], attack: str) -> dict[str, Any]:
    """The attack success rate: the share of images of the attack's prompts that the IP detectors flag."""
    return {"attack": attack, "overall": ip["overall"], "images": ip["images"],
            "by_category": {c: {"asr": v["ip"], "images": v["images"]} for c, v in ip["by_category"].items()}}  # fmt: skip


def routing_of(rows: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """How the router routed a routed render's ``rows`` (``merge.router.metrics``): an image of one of its categories
    should reach that category; an image of any other category (``neutral``, or one it does not route) none."""
    import torch

    from merge.router.metrics import routing_metrics

    labels = torch.tensor([[row["category"] == c for c in categories] for row in rows], dtype=torch.bool)
    chosen = torch.tensor([[c in (row["route"] or "").split(",") for c in categories] for row in rows])
    kinds = ["unsafe" if row["category"] in categories else "neutral" for row in rows]
    shape = (len(rows), len(categories))
    return routing_metrics(chosen.view(shape), labels.view(shape), kinds, categories)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Render, score and report every model of ``config``; returns what ``results.json`` holds."""
    config, published = resolve_prompts(config)
    category = published.category if published else None
    if config.attack and "ip" not in config.metrics:
        raise UserError(
            f"--attack {config.attack}: the attack success rate is IP on its prompts; add ip to --metrics"
        )
    models = models_of(config)
    check_inputs(config, models)
    root = Path(config.output_dir)
    tiny_dir = Path(config.cache_dir) / "tiny-models"

    def resolve(name: str) -> str:
        return resolve_tiny_model(name, tiny_dir)

    scorers = build_scorers(config, resolve)
    router = load_router(config.router) if config.router else None
    prompt_set = PromptSetConfig(
        config.prompts, config.prompts_config, config.prompts_split, config.max_prompts, category
    )
    prompts_manifest = run_stage(PromptSetStage(prompt_set), root, config.progress, config.wait_for_lock)
    score_settings = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(ScoreSettings) if f.name != "label"
    }
    results: dict[str, Any] = {
        "prompt_set": {
            **dataclasses.asdict(prompt_set),
            "prompts": sum(prompts_manifest["stats"].get("prompts", {}).values()),
            "origin": describe_prompts(config.prompts, config.prompts_split, config.attack, published),
        },
        "settings": dataclasses.asdict(config),
        "models": {},
        **({"attack": config.attack} if config.attack else {}),
    }
    for label, lora, folder in models:
        if folder:
            render: Any = FolderStage(label, folder)
        else:
            settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(RenderSettings)
                        if f.name not in ("label", "model", "lora")}  # fmt: skip
            if config.release_compatible:
                settings["image_format"] = "jpeg"
            settings["router"] = config.router if label == ROUTED else None
            settings["router_experts"] = router_experts(config, router) if label == ROUTED else None
            render = RenderStage(
                RenderSettings(label=label, model=config.base, lora=lora, **settings), resolve
            )
        rendered = run_stage(render, root, config.progress, config.wait_for_lock)
        scored = run_stage(
            ScoreStage(ScoreSettings(label=label, **score_settings), scorers),
            root,
            config.progress,
            config.wait_for_lock,
        )
        results["models"][label] = {"model": rendered["model"], "lora": rendered["lora"],
                                    "lora_scale": config.lora_scale if lora else None, **scored["metrics"]}  # fmt: skip
        if config.attack:
            results["models"][label]["asr"] = attack_success(scored["metrics"]["ip"], config.attack)
        if label == ROUTED:
            results["models"][label]["routed_by"] = config.router
            rows = StageDir.finished(root, f"render-{label}").iter_rows()
            results["models"][label]["router"] = routing_of(list(rows), router.categories)
    if distributed_state().is_main_process:
        paths = write_report(results, root, blur=config.blur, rows_per_page=config.report_rows_per_page,
                             max_rows=config.report_max_rows)  # fmt: skip
        logger.info("evaluation: wrote %s", ", ".join(map(str, paths.values())))
        labels = card_labels(config, models)
        for folder in config.update_card:
            label = labels[Path(folder).resolve()]
            entries = eval_results(results["models"][label], results["prompt_set"]["origin"]["name"],
                                   config.prompts_split)  # fmt: skip
            logger.info(
                "evaluation: results of %s written into %s", label, write_eval_results(folder, label, entries)
            )
    return results
