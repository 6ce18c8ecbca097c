"""LoRA experts as per-layer ``(A, B, scale)``, read through diffusers' own LoRA loader, and written back.

``lora_state_dict`` (diffusers) reads a folder, a file or a Hub id and returns the state dict with
the adapter metadata our experts carry (rank, alpha, target modules). Layers are keyed by the denoiser's
module name (a UNet's, or an SD3/FLUX transformer's); ``delta = scale * B @ A`` is what the layer adds to the
base weight.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import OfflineModeIsEnabled

from cards.public import public_name
from coprov2.canonical import canonicalize
from coprov2.errors import UserError
from coprov2.paths import check_model
from dpo.families import family_of
from dpo.save import pipeline_class

#: A LoRA down/A weight's key: the denoiser it adapts (diffusers' prefix: ``unet`` or ``transformer``) and its layer.
_KEY = re.compile(
    r"^(?:(?P<denoiser>unet|transformer)\.)?(?P<layer>.+)\.(?:lora\.down|lora_A)(?:\.default)?\.weight$"
)


@dataclass
class LoraLayer:
    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B.float() @ self.A.float())


@dataclass
class Expert:
    name: str
    layers: dict[str, LoraLayer]
    base_model: str | None = None
    target_modules: list[str] = field(default_factory=list)
    category: str | None = None  # the category it was trained on, where its training summary says
    denoiser: str = "unet"  # what its layers adapt: the base family's ``unet`` or ``transformer``
    settings: dict = field(default_factory=dict)  # its training settings, where its training summary says

    @property
    def rank(self) -> int:
        return max(layer.A.shape[0] for layer in self.layers.values())


def _provenance(source: str) -> tuple[str | None, str | None, dict]:
    """``(base model, category, training settings)`` an expert names in its training summary or card (None and
    no settings where it names none)."""
    folder = Path(source)
    if (folder / "training_summary.json").exists():
        summary = json.loads((folder / "training_summary.json").read_text())
        return summary["base"], summary.get("category"), summary.get("settings", {})
    if (folder / "README.md").exists():
        from huggingface_hub import ModelCard

        return ModelCard.load(folder / "README.md").data.base_model, None, {}
    return None, None, {}


def load_expert(source: str, name: str | None = None) -> Expert:
    """Read the expert at ``source`` (folder, ``.safetensors`` file or Hub id); errors name it."""
    local = Path(source).expanduser().exists()
    if not local:
        check_model(source, "expert")
    try:
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(source, return_lora_metadata=True)
    except (httpx2.TransportError, OfflineModeIsEnabled):
        raise UserError(
            f"expert {source}: no such folder or file here, and the Hub could not be reached to fetch it as a "
            "repo id (no network, or HF_HUB_OFFLINE=1); check the path"
        ) from None
    except Exception as error:  # diffusers raises OSError/ValueError/EnvironmentError variants
        where = "" if local else " (no such folder here, so it was fetched as a Hub repo id)"
        raise UserError(
            f"expert {source}: cannot read a LoRA from it{where}: {type(error).__name__}: {str(error)[:300]}"
        ) from None
    metadata = metadata or {}
    denoisers = {m["denoiser"] or "unet" for m in map(_KEY.match, state) if m}
    if len(denoisers) > 1:
        raise UserError(
            f"expert {source}: adapts both a UNet and a transformer; one expert adapts one denoiser"
        )
    denoiser = denoisers.pop() if denoisers else "unet"
    alpha = metadata.get(f"{denoiser}.lora_alpha")
    layers: dict[str, LoraLayer] = {}
    for key, down in state.items():
        match = _KEY.match(key)
        if not match:
            continue
        layer = match["layer"]
        up_key = key.replace("lora.down", "lora.up").replace("lora_A", "lora_B")
        if up_key not in state:
            raise UserError(f"expert {source}: {key} has no matching up/B weight")
        rank = down.shape[0]
        layer_alpha = (alphas or {}).get(f"{layer}.alpha", alpha if alpha is not None else rank)
        for weight_key in (key, up_key):
            if not torch.isfinite(state[weight_key]).all():
                raise UserError(
                    f"expert {source}: layer {layer} holds NaN or infinite weights ({weight_key})"
                )
        layers[layer] = LoraLayer(A=down.float(), B=state[up_key].float(), scale=float(layer_alpha) / rank)
    if not layers:
        raise UserError(
            f"expert {source}: no denoiser LoRA layers found (keys like {next(iter(state), 'none')})"
        )
    targets = sorted(
        metadata.get(f"{denoiser}.target_modules") or {layer.rsplit(".", 1)[-1] for layer in layers}
    )
    base_model, category, settings = _provenance(source)
    return Expert(name or Path(source).name, layers, base_model, targets, category, denoiser, settings)


def check_compatible(experts: list[Expert], base: str | None = None) -> None:
    """Same base model and same adapted layers across ``experts``, or a ValueError naming the odd one out."""
    if not experts:
        raise UserError("no experts given")
    reference = experts[0]
    for expert in experts:
        if expert.denoiser != reference.denoiser:
            raise UserError(
                f"expert {expert.name} adapts a {expert.denoiser}, expert {reference.name} a {reference.denoiser}: "
                "experts of different base families cannot be merged; merge each family's experts on its own base"
            )
        if (
            base and expert.base_model and expert.base_model not in (base, public_name(base))
        ):  # a summary's is public
            raise UserError(f"expert {expert.name} was trained on {expert.base_model}, not on {base}")
        if expert.base_model and reference.base_model and expert.base_model != reference.base_model:
            raise UserError(
                f"expert {expert.name} was trained on {expert.base_model}; expert {reference.name} on {reference.base_model}"
            )
        if set(expert.layers) != set(reference.layers):
            odd = sorted(set(expert.layers) ^ set(reference.layers))
            raise UserError(
                f"expert {expert.name} adapts other layers than expert {reference.name} (e.g. {odd[0]}); "
                f"targets {expert.target_modules} vs {reference.target_modules}"
            )
        for layer, lora in expert.layers.items():
            if (
                lora.B.shape[0] != reference.layers[layer].B.shape[0]
                or lora.A.shape[1] != reference.layers[layer].A.shape[1]
            ):
                raise UserError(
                    f"expert {expert.name}: layer {layer} has another shape than in expert {reference.name}"
                )


def save_merged(
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]], base: str, folder: Path, targets: list[str]
) -> Path:
    """Write merged ``{layer: (A, B)}`` (scale folded in, so alpha = rank) as a diffusers LoRA file."""
    ranks = {A.shape[0] for A, _ in layers.values()}
    if len(ranks) != 1:
        raise UserError(f"merged layers have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    state = {}
    for layer, (A, B) in layers.items():
        state[f"{layer}.lora_A.weight"] = A.contiguous()
        state[f"{layer}.lora_B.weight"] = B.contiguous()
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": sorted(targets), "init_lora_weights": True}
    folder.mkdir(parents=True, exist_ok=True)
    family_of(base).save_lora_weights(pipeline_class(base), folder, state, metadata)
    canonicalize(folder / "pytorch_lora_weights.safetensors")
    return folder / "pytorch_lora_weights.safetensors"
