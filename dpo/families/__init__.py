"""Base model families (``family_of``): the only place that branches on the kind of denoiser.

- ``unet`` (SD1.x/2.x, SDXL): Diffusion-DPO, noise or v-prediction (``unet.py``);
- ``sd3`` (SD3, SD3.5) and ``flux`` (FLUX.1): Flow-DPO on rectified-flow transformers (``flow.py``,
  ``sd3.py``, ``flux.py``).
"""

from __future__ import annotations

from diffusers import DiffusionPipeline

from coprov2.errors import UserError
from dpo.families.base import Conditioning, Family
from dpo.families.flux import FluxFamily
from dpo.families.sd3 import SD3Family
from dpo.families.unet import UNetFamily

FAMILIES: tuple[Family, ...] = (UNetFamily(), SD3Family(), FluxFamily())


def family_of(base: str, revision: str | None = None, option: str = "--base") -> Family:
    """The family of the diffusers pipeline ``base`` (folder or Hub id), read from its ``model_index.json``."""
    return family_of_index(DiffusionPipeline.load_config(base, revision=revision), f"{option} {base}")


def check_sizes(
    base: str,
    revision: str | None,
    sizes: dict[str, int | None],
    option: str = "--base",
    name: str | None = None,
) -> None:
    """Each ``{option: size}`` (an image side the base renders or trains at; None: its default) fits the base's VAE
    factor and its denoiser's downsampling or patch size (the family's rule), else one line naming the option, the
    value and what the base accepts; ``name``: the base as the user named it (``tiny:flux``, not the folder it was
    written to). Reads the base's configs only."""
    from diffusers import AutoencoderKL

    sizes = {size_option: size for size_option, size in sizes.items() if size is not None}
    if not sizes:
        return
    family = family_of(base, revision, option)
    vae = AutoencoderKL.load_config(base, subfolder="vae", revision=revision)
    for size_option, size in sizes.items():
        try:
            family.resolution(base, revision, size, vae)
        except UserError as error:
            raise UserError(f"{size_option} {size}: {str(error).replace(base, name or base)}") from None


def family_of_pipeline(pipe) -> Family:
    """The family of a loaded pipeline (its ``config`` is its ``model_index.json``)."""
    return family_of_index(dict(pipe.config), type(pipe).__name__)


def family_of_index(model_index: dict, what: str) -> Family:
    """The family whose ``matches`` takes ``model_index``; ``what`` names the input in the error."""
    for family in FAMILIES:
        if family.matches(model_index):
            return family
    components = ", ".join(
        f"{k}={v[1]}" for k, v in model_index.items() if isinstance(v, list | tuple) and len(v) == 2 and v[1]
    )
    raise UserError(
        f"{what}: a {model_index.get('_class_name', 'pipeline')} ({components}) is not a supported base "
        f"family; supported: {', '.join(f.name for f in FAMILIES)} (SD1.x/2.x/SDXL UNets, SD3/SD3.5, FLUX.1)"
    )


__all__ = [
    "FAMILIES",
    "Conditioning",
    "Family",
    "check_sizes",
    "family_of",
    "family_of_index",
    "family_of_pipeline",
]
