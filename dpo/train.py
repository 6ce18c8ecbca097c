"""``python -m dpo.train``: train Diffusion-DPO (UNets) or Flow-DPO (SD3/SD3.5, FLUX.1) LoRA safety experts on
CoProV2 (one call: ``dpo.train_experts(config)``).

Examples::

    python -m dpo.train --dataset me/coprov2 --category violence --base stable-diffusion-v1-5/stable-diffusion-v1-5 --output_dir experts/violence
    accelerate launch -m dpo.train --dataset coprov2-out/dataset --category each --output_dir experts
    python -m dpo.train --dataset release_pickapic_formatted --category Harrasment --output_dir experts/harassment
    python -m dpo.train --dataset me/coprov2 --category violence --base black-forest-labs/FLUX.1-dev --resolution 512 \
        --gradient_checkpointing --output_dir experts-flux/violence
"""

from __future__ import annotations

import logging
import sys

from coprov2.cli import DataclassArgumentParser
from coprov2.errors import run_cli
from coprov2.paths import check_hub_access, check_writable_dir
from dpo.config import DPOConfig
from dpo.trainer import train


def make_parser() -> DataclassArgumentParser:
    return DataclassArgumentParser(
        DPOConfig,
        prog="python -m dpo.train",
        description=(
            "Train a Diffusion-DPO LoRA safety expert per harm category (SafetyDPO; Flow-DPO on SD3/SD3.5 and FLUX.1 "
            "bases): for each unsafe prompt of CoProV2 the safe image is preferred over the unsafe one. The reference "
            "model is the base's denoiser with its adapters off; VAE latents and text embeddings are cached once per "
            "(dataset, base model). "
            "Checkpoints resume exactly; the result is a diffusers LoRA (pipe.load_lora_weights) with a model card."
        ),
    )


def parse_args(argv: list[str] | None = None) -> DPOConfig:
    (config,) = make_parser().parse_args_into_dataclasses(args=argv)
    return config


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    check_writable_dir(config.output_dir, "--output_dir")
    check_hub_access(config.base, "--base", config.revision)
    for result in train(config):
        print(f"expert {result.category}: {result.output_dir} {result.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
