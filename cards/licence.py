"""The licence a LoRA's card carries: its base model's, never a guess.

A LoRA is a derivative of its base and carries the base's terms (SD1.5: CreativeML OpenRAIL-M; SD2.x and SDXL:
OpenRAIL++; SD3/SD3.5: the Stability AI Community License; FLUX.1-dev: its own non-commercial licence;
FLUX.1-schnell: Apache 2.0). Read, in order: the base folder's own model card (``README.md`` metadata, also from
the local Hub cache, never the network), a table of the known bases' Hub ids, else ``other`` with the base named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Licence:
    """The card's ``license`` and, for ``other``, its ``license_name`` and ``license_link`` (the Hub's fields)."""

    license: str
    name: str | None = None
    link: str | None = None


_SAI_COMMUNITY = "stabilityai-ai-community"


def _sai(repo: str) -> Licence:
    return Licence("other", _SAI_COMMUNITY, f"https://huggingface.co/{repo}/blob/main/LICENSE.md")


#: Known bases by Hub id, as their own cards state them.
KNOWN_BASES: dict[str, Licence] = {
    **dict.fromkeys(
        (
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "runwayml/stable-diffusion-v1-5",
            "CompVis/stable-diffusion-v1-4",
        ),
        Licence("creativeml-openrail-m"),
    ),
    **dict.fromkeys(
        (
            "stabilityai/stable-diffusion-2-1",
            "stabilityai/stable-diffusion-2-1-base",
            "stabilityai/stable-diffusion-xl-base-1.0",
        ),
        Licence("openrail++"),
    ),
    **{
        repo: _sai(repo)
        for repo in (
            "stabilityai/stable-diffusion-3-medium-diffusers",
            "stabilityai/stable-diffusion-3.5-medium",
            "stabilityai/stable-diffusion-3.5-large",
            "stabilityai/stable-diffusion-3.5-large-turbo",
        )
    },
    "black-forest-labs/FLUX.1-dev": Licence(
        "other",
        "flux-1-dev-non-commercial-license",
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    ),
    "black-forest-labs/FLUX.1-schnell": Licence("apache-2.0"),
}
#: ``license_name`` when the base's licence is not known here: the reader must look at the base.
UNKNOWN = "same-as-base-model"


def _card_licence(readme: Path) -> Licence | None:
    from huggingface_hub import ModelCard

    data = ModelCard.load(readme).data
    return Licence(data.license, data.get("license_name"), data.get("license_link")) if data.license else None


def base_licence(base: str, folder: str | Path | None = None) -> Licence:
    """The licence of ``base`` (its name on the card: a Hub id, a folder or ``tiny:<kind>``); ``folder``: where its
    files are, if not at ``base``."""
    from huggingface_hub import try_to_load_from_cache

    readme = Path(folder or base) / "README.md"
    if not readme.is_file() and "/" in base and not Path(base).exists():
        cached = try_to_load_from_cache(base, "README.md")
        readme = Path(cached) if isinstance(cached, str) else readme
    if readme.is_file() and (found := _card_licence(readme)):
        return found
    if base in KNOWN_BASES:
        return KNOWN_BASES[base]
    hub = "/" in base and not Path(base).exists() and not base.startswith((".", "~"))
    return Licence("other", UNKNOWN, f"https://huggingface.co/{base}" if hub else None)
