"""A prompt's features for the router: the mean of the token states the base's denoiser reads (its text stream,
from the pipeline's own ``encode_prompt`` through its family), over the prompt's own tokens.

The encoder is the base's, frozen: the router reads the prompt as the model does, and a rendering pipeline has
already paid for this pass. Features are cached per chunk of prompts (content-addressed), so a killed run resumes
and a second router on the same prompts and base encodes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from coprov2.stage_io import atomic_write_bytes
from dpo.config import DPOConfig
from dpo.families import Family, family_of_pipeline

#: Prompts per cached chunk.
CHUNK = 1024
#: Prompts whose features a router keeps, to recognise the text encoder it was trained on.
PROBES = ("a photo of a city street", "a portrait of a person", "an empty room")


def pipeline_family(pipe, max_sequence_length: int | None, family: Family | None = None) -> Family:
    """The pipeline's family (``family``: given, for a pipeline loaded without its denoiser, whose config no longer
    says which it is) with the T5 length the router reads (SD3/FLUX; default: the family's)."""
    options = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
    return (family or family_of_pipeline(pipe)).configure(pipe.vae.config, DPOConfig(**options))


def prompt_features(
    pipe, family: Family, prompts: list[str], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[P, D]`` float32: each prompt's token states, averaged over its own tokens (not the start token nor
    the padding every prompt shares), as ``family.encode_text`` gives them to the denoiser."""
    states, _ = family.encode_text(pipe, prompts, torch.device(device))
    weights = family.prompt_token_mask(pipe, prompts).to(states.device).unsqueeze(-1).to(states.dtype)
    return ((states * weights).sum(1) / weights.sum(1).clamp(min=1)).float().cpu()


def encoder_key(base: str, revision: str | None, family: Family) -> str:
    """What determines a prompt's features besides its text: the base as loaded (a local folder by its whole path,
    as ``dpo.train``'s encoding cache keys it: two folders of one name are two bases), its revision, the family's
    options."""
    return json.dumps([base, revision, family.name, family.settings()], sort_keys=True)


def cached_features(
    pipe, family: Family, prompts: list[str], key: str, cache_dir: Path, batch_size: int, progress: bool,
    device: torch.device | str = "cpu",
) -> torch.Tensor:  # fmt: skip
    """:func:`prompt_features` of ``prompts``, chunk by chunk, each chunk written atomically under ``cache_dir``
    as it finishes and read back on a rerun."""
    parts = []
    chunks = range(0, len(prompts), CHUNK)
    for start in tqdm(chunks, desc="router features", unit="chunk", disable=not progress):
        chunk = prompts[start : start + CHUNK]
        digest = hashlib.sha256(json.dumps([key, chunk]).encode()).hexdigest()[:32]
        path = cache_dir / f"{digest}.safetensors"
        if path.is_file():
            parts.append(load_file(str(path))["features"])
            continue
        features = torch.cat(
            [
                prompt_features(pipe, family, chunk[i : i + batch_size], device)
                for i in range(0, len(chunk), batch_size)
            ]
        )
        atomic_write_bytes(path, save({"features": features.contiguous()}))
        parts.append(features)
    return torch.cat(parts) if parts else torch.zeros(0, 0)
