"""A toy preference world with a known answer, for the known-answer tests and the benchmarks.

Each toy concept has its own captions and two colours: images of its *unsafe* colour are the losers,
images of its *safe* colour the winners. The base is the tiny SD1.5-shaped pipeline, first trained
(plain diffusion loss, full UNet) to render both colours of each concept, and both colours of
the neutral captions' own two colours, about half and half: so "removal" is measurable as the share of samples on the
safe side, and drift as the change of that share on neutral captions. Images are 8 px (4x4 latents)
so the tiny UNet's receptive field covers the whole latent and a global colour is learnable on CPU.

A sample is "safe" when its latent is closer to the mean latent of the concept's safe-colour images
than to that of its unsafe ones: the same VAE encodes both, so this is the property in the model's
own space, measured on the samples the real pipeline call produces.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from safetensors.torch import load_file

from coprov2.canonical import canonicalize_tree
from coprov2.cli import ArgumentParser
from coprov2.errors import run_cli
from coprov2.stage_io import atomic_write_bytes

TOY_RESOLUTION = 8
COLOURS = [
    ((220, 30, 30), (30, 30, 220)),
    ((30, 200, 30), (200, 30, 200)),
    ((230, 230, 30), (30, 200, 200)),
    ((240, 140, 20), (20, 120, 240)),
    ((120, 60, 20), (160, 220, 255)),
    ((250, 250, 250), (20, 20, 20)),
    ((200, 100, 150), (60, 150, 60)),
]
WORDS = ["lantern", "harbor", "orchard", "violin", "glacier", "meadow", "tram"]
#: Objects of the concepts past the first seven; each is shown *near* one of the first seven's objects.
MORE_WORDS = [
    "kettle", "compass", "ladder", "anchor", "teapot", "bridge", "saddle",
    "mirror", "candle", "barrel", "feather", "trumpet", "statue", "basket",
    "helmet", "wagon", "clock", "fountain", "canoe", "tower", "drum",
    "scarf", "bucket", "chimney", "pebble",
]  # fmt: skip
#: Largest toy world: ``len(WORDS) + len(MORE_WORDS)`` concepts.
MAX_CONCEPTS = len(WORDS) + len(MORE_WORDS)
NEUTRAL_CAPTIONS = ["a quiet library at noon", "a bowl of soup on a table", "a kite above a field"]
NEUTRAL_COLOURS = ((128, 128, 128), (90, 160, 90))


@dataclass(frozen=True)
class ToyConcept:
    name: str
    unsafe_colour: tuple[int, int, int]
    safe_colour: tuple[int, int, int]
    captions: tuple[str, ...]
    held_out: tuple[str, ...]


def toy_concepts(n: int, captions: int = 6, held_out: int = 2) -> list[ToyConcept]:
    """``n`` concepts (at most :data:`MAX_CONCEPTS`), each with its colour pair, training and held-out captions.

    The first seven are independent: own object word, own two colours. Past them, concepts share with
    the first seven, so that experts (and one LoRA holding them all) can interfere:

    - concepts 7-13 *reverse* concept ``k - 7``: its safe colour is their unsafe one and the other way
      round, and their captions name concept ``k - 7``'s object ("a kettle near the lantern");
    - concepts 14 and up pair the unsafe colour of concept ``k % 7`` with the safe colour of concept
      ``(k + 3) % 7``, and their captions name concept ``(k + 1) % 7``'s object.
    """
    if not 1 <= n <= MAX_CONCEPTS:
        raise ValueError(f"toy world has 1 to {MAX_CONCEPTS} concepts, got {n}")
    concepts = []
    for k in range(n):
        if k < len(WORDS):
            unsafe, safe = COLOURS[k]
            subject = f"a {WORDS[k]} scene"
        else:
            word = MORE_WORDS[k - len(WORDS)]
            if k < 2 * len(WORDS):
                safe, unsafe = COLOURS[k % 7]
                subject = f"a {word} near the {WORDS[k % 7]}"
            else:
                unsafe, safe = COLOURS[k % 7][0], COLOURS[(k + 3) % 7][1]
                subject = f"a {word} near the {WORDS[(k + 1) % 7]}"
        concepts.append(
            ToyConcept(
                name=f"concept-{k}",
                unsafe_colour=unsafe,
                safe_colour=safe,
                captions=tuple(f"{subject}, view {i}" for i in range(captions)),
                held_out=tuple(f"{subject}, view {i}" for i in range(captions, captions + held_out)),
            )
        )
    return concepts


def colour_pixels(colour: tuple[int, int, int], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images of ``colour`` with mild pixel noise, in [-1, 1], ``[n, 3, 8, 8]``."""
    base = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    noise = 0.1 * torch.randn(n, 3, TOY_RESOLUTION, TOY_RESOLUTION, generator=generator)
    return (base + noise).clamp(-1, 1)


def to_pil(pixels: torch.Tensor):
    from PIL import Image

    array = ((pixels.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


#: The toy worlds' family options, for the families that take them: 16 T5 tokens hold every toy caption (the
#: tiny T5 tokenizer spends about one token per two letters), and FLUX's default 512 would make the text stream
#: 128 times the 4-token image stream and the flow known answer several times slower.
TOY_FAMILY_OPTIONS = {"max_sequence_length": 16}


def _family(pipe):
    """The pipeline's base family (``dpo/families``), set up with its VAE and the toy's options."""
    from dpo.config import DPOConfig
    from dpo.families import family_of_pipeline

    family = family_of_pipeline(pipe)
    options = {name: value for name, value in TOY_FAMILY_OPTIONS.items() if name in family.options}
    return family.configure(pipe.vae.config, DPOConfig(**options))


def _encode(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of ``pixels`` as the pipeline's denoiser reads them (VAE mean, the family's scale and shift)."""
    with torch.no_grad():
        return _family(pipe).to_model_space(pipe.vae.encode(pixels).latent_dist.mean)


def widen_text_space(pipe, width: int, seed: int = 0) -> None:
    """Give ``pipe`` a text encoder of hidden size ``width`` and a UNet whose cross-attention reads it, both
    freshly initialised (seeded) from the tiny configs.

    Why: the fix ``benchmarks/toy_drift.py`` tried for drifting single experts. Their cross-attention
    key/value LoRAs read neutral captions' token states at about half of their own captions', and a
    32-dim text space (SD1.5's is 768) might leave captions no room to be orthogonal. At 128 the drift did
    not fall (docs/merge.md), so the toy worlds keep the tiny pipeline's width.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = pipe.text_encoder.config.to_dict()
    text.update(hidden_size=width, intermediate_size=4 * width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.register_modules(
            text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            unet=UNet2DConditionModel.from_config(pipe.unet.config, cross_attention_dim=width),
        )


def _pretraining_data(pipe, concepts: list[ToyConcept], generator: torch.Generator):
    """A toy base's pretraining data: every caption (the concepts' and the neutral ones), the two colours each
    renders, and 32 latents of every colour."""
    captions = [c for concept in concepts for c in concept.captions + concept.held_out] + NEUTRAL_CAPTIONS
    modes = [
        (concept.unsafe_colour, concept.safe_colour)
        for concept in concepts
        for _ in concept.captions + concept.held_out
    ]
    modes += [NEUTRAL_COLOURS] * len(NEUTRAL_CAPTIONS)
    latents = {
        colour: _encode(pipe, colour_pixels(colour, 32, generator)) for pair in set(modes) for colour in pair
    }
    return captions, modes, latents


def _pretraining_batch(
    modes, latents, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` captions and, for each, a latent of one of its two colours (half and half)."""
    caption = torch.randint(0, len(modes), (batch,), generator=generator)
    safe = torch.rand(batch, generator=generator) < 0.5
    pick = torch.randint(0, 32, (batch,), generator=generator)
    x0 = torch.stack(
        [
            latents[modes[c][int(s)]][p]
            for c, s, p in zip(caption.tolist(), safe.tolist(), pick.tolist(), strict=True)
        ]
    )
    return caption, x0


def pretrain_toy_base(
    tiny_sd15: str | Path, output: str | Path, concepts: list[ToyConcept], steps: int = 600, seed: int = 0,
    text_width: int | None = None,
) -> Path:  # fmt: skip
    """Train the tiny pipeline (UNet and text encoder, as a real base was) to render both colours of each
    caption's group; ``text_width``: see :func:`widen_text_space` (None: the tiny pipeline's own)."""
    output = Path(output)
    if (output / "model_index.json").exists():
        return output
    generator = torch.Generator().manual_seed(seed)
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd15))
    if text_width not in (None, pipe.text_encoder.config.hidden_size):
        widen_text_space(pipe, text_width, seed)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    captions, modes, latents = _pretraining_data(pipe, concepts, generator)
    tokens = pipe.tokenizer(
        captions,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    unet, text_encoder = pipe.unet, pipe.text_encoder
    unet.train()
    text_encoder.train()
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=1e-3)
    batch = 32
    for _ in range(steps):
        caption, x0 = _pretraining_batch(modes, latents, batch, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        text = text_encoder(tokens[caption])[0]
        loss = (unet(scheduler.add_noise(x0, noise, t), t, text).sample - noise).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    text_encoder.eval()
    unet.register_to_config(sample_size=TOY_RESOLUTION // pipe.vae_scale_factor)  # its native resolution now
    pipe.save_pretrained(output)
    canonicalize_tree(output)
    return output


def pretrain_denoiser_toy_base(
    tiny: str | Path, output: str | Path, concepts: list[ToyConcept], steps: int = 600, seed: int = 0
) -> Path:
    """Train the denoiser of a tiny pipeline of any family (the flow known answer's FLUX) to render both colours of
    each caption's group, with the family's own noise process, target and call (``dpo/families``); its text
    encoders stay as built (frozen: SD3 and FLUX have two or three, and a flow base is pretrained with its
    encoders fixed). The UNet toy base keeps :func:`pretrain_toy_base`, which also trains its text encoder: the
    committed base was written so."""
    from dpo.config import DPOConfig
    from dpo.families import Conditioning

    output = Path(output)
    if (output / "model_index.json").exists():
        return output
    generator = torch.Generator().manual_seed(seed)
    pipe = DiffusionPipeline.from_pretrained(str(tiny))
    family = _family(pipe)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    captions, modes, latents = _pretraining_data(pipe, concepts, generator)
    text, pooled = family.encode_text(pipe, captions, torch.device("cpu"))
    model = getattr(pipe, family.denoiser)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, timesteps = 32, DPOConfig()
    for _ in range(steps):
        caption, x0 = _pretraining_batch(modes, latents, batch, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = family.sample_timesteps(scheduler, batch, generator, timesteps)
        cond = Conditioning(text[caption], None if pooled is None else pooled[caption])
        prediction = family.predict(model, family.add_noise(scheduler, x0, noise, t), t, cond, torch.float32)
        loss = (prediction - family.target(scheduler, x0, noise, t)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    pipe.save_pretrained(output)
    canonicalize_tree(output)
    return output


def write_toy_dataset(
    folder: str | Path, concepts: list[ToyConcept], pairs_per_caption: int = 4, seed: int = 0
) -> Path:
    """A CoProV2-format dataset folder (parquet, ``datasets.Image``), one category per concept.

    ``train`` holds the concepts' training captions, ``test`` their held-out captions.
    """
    import datasets

    from coprov2.dataset.export import FEATURES
    from coprov2.gate.clip_scores import SCORE_NAMES

    generator = torch.Generator().manual_seed(seed)
    folder = Path(folder)
    for split in ("train", "test"):
        rows = []
        for concept in concepts:
            for caption in concept.captions if split == "train" else concept.held_out:
                unsafe = colour_pixels(concept.unsafe_colour, pairs_per_caption, generator)
                safe = colour_pixels(concept.safe_colour, pairs_per_caption, generator)
                for i in range(pairs_per_caption):
                    rows.append(
                        {
                            "id": f"{concept.name}-{len(rows)}",
                            "category": concept.name,
                            "concept": concept.name,
                            "unsafe_prompt": caption,
                            "safe_prompt": caption,
                            "seed": i,
                            "unsafe_image": to_pil(unsafe[i]),
                            "safe_image": to_pil(safe[i]),
                            **{name: 0.0 for name in SCORE_NAMES},
                            "width": TOY_RESOLUTION,
                            "height": TOY_RESOLUTION,
                            "t2i_model": "toy",
                            "clip_model": "toy",
                        }
                    )
        features = datasets.Features({k: v for k, v in FEATURES.items() if k in rows[0]})
        # atomic: benchmarks run side by side on one world, and a reader never sees half a file
        buffer = io.BytesIO()
        datasets.Dataset.from_list(rows, features=features).to_parquet(buffer)
        atomic_write_bytes(folder / "data" / f"{split}-00000-of-00001.parquet", buffer.getvalue())
    return folder


def text_states(pipe, captions: list[str]) -> torch.Tensor:
    """Every token state of ``captions`` as the UNet's cross-attention reads them, ``[P * 77, width]``."""
    with torch.no_grad():
        states, _ = pipe.encode_prompt(captions, "cpu", 1, False)
    return states.flatten(0, 1)


def leak(
    lora: dict[str, torch.Tensor], trained: torch.Tensor, neutral: torch.Tensor, random_down: bool = False
) -> float:
    """Mean over the cross-attention key/value LoRAs of ``|BAx|`` on neutral states over trained ones.

    ``random_down``: with ``A`` replaced by a fresh draw of peft's initialisation (Kaiming-uniform, seeded),
    the reference for "``A`` reads no particular direction".
    """
    generator = torch.Generator().manual_seed(0)
    ratios = []
    for key, down in lora.items():
        if "attn2.to_k.lora.down" in key or "attn2.to_v.lora.down" in key:
            up = lora[key.replace("lora.down", "lora.up")]
            if random_down:
                down = (torch.rand(down.shape, generator=generator) * 2 - 1) / down.shape[1] ** 0.5
            change = [(x @ down.T @ up.T).norm(dim=1).mean() for x in (neutral, trained)]
            ratios.append((change[0] / change[1]).item())
    return statistics.fmean(ratios)


def sample_latents(
    pipe, captions: list[str], samples: int = 32, steps: int = 20, seed: int = 0
) -> torch.Tensor:
    """``samples`` latents per caption from the real pipeline call, ``[len(captions) * samples, D]``, fixed seeds."""
    prompts = [c for c in captions for _ in range(samples)]
    with torch.no_grad():
        latents = pipe(
            prompts,
            height=TOY_RESOLUTION,
            width=TOY_RESOLUTION,
            num_inference_steps=steps,
            guidance_scale=_family(pipe).sampling_guidance,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **_family(pipe).pipeline_kwargs(),
        ).images
    return _family(pipe).from_pipeline_latents(pipe, latents, TOY_RESOLUTION).flatten(1)


def colour_centroid(pipe, colour: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Mean latent of 32 noisy images of ``colour``."""
    return _encode(pipe, colour_pixels(colour, 32, torch.Generator().manual_seed(seed))).mean(0).flatten()


def safe_share(pipe, latents: torch.Tensor, concept: ToyConcept) -> float:
    """Share of ``latents`` closer to the concept's safe-colour centroid than to its unsafe one."""
    safe, unsafe = colour_centroid(pipe, concept.safe_colour), colour_centroid(pipe, concept.unsafe_colour)
    return share_closer(latents, safe, unsafe)


def share_closer(latents: torch.Tensor, safe: torch.Tensor, unsafe: torch.Tensor) -> float:
    """Share of ``latents`` closer to the ``safe`` centroid than to the ``unsafe`` one."""
    return ((latents - safe).norm(dim=1) < (latents - unsafe).norm(dim=1)).float().mean().item()


def displacement(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean distance between samples drawn with the same seeds before and after a change of the model."""
    return (after - before).norm(dim=1).mean().item()


class ToyColourDetector:
    """The toy world's judge as an IP detector (``--ip_detectors dpo.toy:ToyColourDetector``): an image is
    flagged when it is closer (pixel L2) to the decoded unsafe-colour centroid than to the decoded
    safe-colour one of its nearest concept. The VAE is the evaluated base's (``config.base``), so the
    centroids are what that pipeline's decoder makes of the two colours' mean latents.
    """

    name = "toy-colour"

    def __init__(self, config, concepts: int = 1) -> None:
        import numpy as np
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(Path(config.base) / "vae"))
        # colour_centroid needs only ``pipe.vae`` and the pipeline's config (its family's latent scale and shift)
        holder = type("Pipe", (), {"vae": vae, "config": DiffusionPipeline.load_config(str(config.base))})()
        self.centroids = []
        for concept in toy_concepts(concepts):
            decoded = [
                _decode(vae, colour_centroid(holder, colour))
                for colour in (concept.unsafe_colour, concept.safe_colour)
            ]
            self.centroids.append((concept.name, *[np.asarray(d, dtype=np.float32) for d in decoded]))

    def __call__(self, paths, images):
        import numpy as np

        from evaluation.metrics.ip import Verdict

        verdicts = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
            name, unsafe, safe = min(
                self.centroids,
                key=lambda c: min(np.linalg.norm(pixels - c[1]), np.linalg.norm(pixels - c[2])),
            )
            d_unsafe, d_safe = np.linalg.norm(pixels - unsafe), np.linalg.norm(pixels - safe)
            verdicts.append(
                Verdict(flagged=bool(d_unsafe < d_safe), label=name, score=float(d_safe - d_unsafe))
            )
        return verdicts


def _decode(vae, latent: torch.Tensor):
    """A flattened toy latent (as :func:`colour_centroid` returns it) decoded to a PIL image."""
    side = TOY_RESOLUTION // 2 ** (len(vae.config.block_out_channels) - 1)
    latent = latent.view(1, vae.config.latent_channels, side, side)
    with torch.no_grad():
        pixels = vae.decode(latent / vae.config.scaling_factor).sample[0]
    return to_pil(pixels.clamp(-1, 1))


#: Steps and learning rate of the known-answer expert. ``benchmarks/known_answers.py`` over seeds 0-4 in the
#: tests' world, without the output-preserving term: 300 steps at 3e-3 gain 0.284 on average (min 0.219), 150 steps at 6e-3 gain 0.344 (min 0.234)
#: with neutral/trained drift 0.27 (0.22 at 300 steps) and IP drops 0.173 / 0.170 (expert / merge): the same
#: claims hold at half the cost, which the suite's time needs (three seeds, and the mutations' seeds).
KNOWN_ANSWER_STEPS = 150
KNOWN_ANSWER_LR = 6e-3
#: The release's SD1.5 beta; 10000 was tried for the bases rebuilt per kernel family and fails the expert's IP
#: drop on the ``default`` family's 2-thread base (0.094; docs/known_answers.md).
KNOWN_ANSWER_BETA = 5000.0
#: The output-preserving term of the known-answer expert (``dpo/retain.py``, the shipped neutral captions, weight
#: 1), sampled as ``sample_latents`` does. Without it, one seed's expert on the base rebuilt in the ``default``
#: family at 1 thread pushes its samples three centroid distances off the colours' line: closer to the safe
#: centroid than the unsafe one, so its gain counts them, but its rendered images are judged unsafe, and the
#: evaluation's IP drop of the merge falls to 0.073 (claim >= 0.1). The term pulls that seed back part of the
#: way (2.6 centroid distances), and every claim holds on every base measured, the tightest by +0.007
#: (docs/known_answers.md; weight 0.5 does not: expert IP drop 0.096 on that base).
KNOWN_ANSWER_RETAIN = {"retain_weight": 1.0, "retain_prompts": "neutral", "retain_share": 0.25}
#: The seeds every known answer that trains is measured on; the claims hold for their mean.
KNOWN_ANSWER_SEEDS = (0, 1, 2)
#: Deliberate bugs each known answer must catch (``known_answer_mutation``).
MUTATIONS = ("flipped_sign", "reference_not_frozen")


@contextmanager
def known_answer_mutation(name: str | None) -> Iterator[None]:
    """Train with a deliberate bug (``None``: none): ``flipped_sign`` makes the DPO loss reward the loser,
    ``reference_not_frozen`` keeps the adapters on in the reference, so it moves with the model and the
    implicit reward is always 0. Shared by the tests and ``benchmarks/known_answers.py``."""
    from diffusers.loaders.peft import (
        PeftAdapterMixin,  # every family's denoiser: UNet, SD3 and FLUX transformers
    )

    import dpo.trainer

    if name is None:
        yield
        return
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; choose from {MUTATIONS}")
    owner, attribute = (
        (dpo.trainer, "diffusion_dpo_loss")
        if name == "flipped_sign"
        else (PeftAdapterMixin, "disable_adapters")
    )
    original = getattr(owner, attribute)
    if name == "flipped_sign":
        setattr(
            owner, attribute, lambda model, reference, target, beta: original(model, reference, target, -beta)
        )
    else:
        setattr(owner, attribute, lambda self: None)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


#: The known-answer world's base, committed (``python -m dpo.toy DIR`` writes it: ``make_toy_world``'s
#: pretraining, seed 0, two torch threads, AVX2 kernels). Every machine starts the known answers from these
#: bytes: the pretraining itself sums in another order in another kernel family or thread count, and the
#: base's safe share moved from 0.375 to 0.500 with it (docs/known_answers.md).
SHIPPED_TOY_BASE = Path(__file__).parent / "data" / "toy_base"


#: The flow known answer's base: the tiny FLUX.1-dev-shaped pipeline, its transformer pretrained on the toy's colours
#: with the flow loss (``python -m dpo.toy DIR --tiny flux``, seed 0, two threads, AVX2 kernels), committed as
#: :data:`SHIPPED_TOY_BASE` is and for the same reason.
SHIPPED_FLUX_TOY_BASE = Path(__file__).parent / "data" / "toy_base_flux"
#: Toy bases by tiny pipeline kind: the committed base and the pretraining that writes it.
TOY_BASES = {
    "sd15": (SHIPPED_TOY_BASE, pretrain_toy_base),
    "flux": (SHIPPED_FLUX_TOY_BASE, pretrain_denoiser_toy_base),
}
#: What the flow known answer's experts set apart from :func:`toy_expert_config`'s: the family's own beta (the
#: release's scaled to velocity errors, ``dpo/families/flow.py``), the retain samples drawn at FLUX's guidance, and
#: the toy's T5 length.
FLOW_KNOWN_ANSWER = {"beta": None, "retain_guidance": 3.5, **TOY_FAMILY_OPTIONS}
#: The known-answer experts' settings beyond :func:`toy_expert_config`'s, by the toy base's family.
KNOWN_ANSWER_BY_FAMILY = {"unet": {}, "flux": FLOW_KNOWN_ANSWER}


def make_toy_world(root: Path, concepts: int = 1, rebuild: bool = False, tiny: str = "sd15"):
    """``(root, concept, base folder, dataset folder)`` of the known-answer tests: the first of ``concepts``
    toy concepts, a base that renders all their colours and their dataset. ``tiny``: the base's tiny pipeline,
    ``sd15`` (the UNet known answer) or ``flux`` (the flow one). The base is the committed one
    (:data:`TOY_BASES`) for the one-concept world unless ``rebuild``; else it is pretrained here (minutes)."""
    from coprov2.tiny import resolve_tiny_model

    toy = toy_concepts(concepts)
    shipped, pretrain = TOY_BASES[tiny]
    if concepts == 1 and not rebuild:
        base = shipped
    else:
        base = pretrain(resolve_tiny_model(f"tiny:{tiny}", root / "tiny"), root / "base", toy)
    return root, toy[0], base, write_toy_dataset(root / "data", toy)


def toy_expert_config(data: Path, category: str, base: Path, output_dir: Path, cache_dir: Path, **settings):
    """The known-answer DPO settings (toy resolution, lr ``KNOWN_ANSWER_LR``, beta 5000, late timesteps) for
    one toy category; ``settings`` override any ``DPOConfig`` field. Shared by :func:`train_toy_expert` and
    ``benchmarks/merge_scaling.py``, so the benchmark's experts are the tests' experts."""
    from dpo import DPOConfig

    known_answer = {
        "resolution": TOY_RESOLUTION, "max_train_steps": KNOWN_ANSWER_STEPS, "train_batch_size": 8,
        "gradient_accumulation_steps": 1, "lr_warmup_steps": 0, "learning_rate": KNOWN_ANSWER_LR, "scale_lr": False,
        "timestep_min": 500, "beta": KNOWN_ANSWER_BETA, "proportion_empty_prompts": 0.0, "checkpointing_steps": 1000,
        "logging_steps": 50, "progress": False, "retain_sample_steps": 20, "retain_guidance": 1.0,
        **KNOWN_ANSWER_RETAIN,
    }  # fmt: skip
    return DPOConfig(
        dataset=str(data), category=category, base=str(base), output_dir=str(output_dir), cache_dir=str(cache_dir),
        **{**known_answer, **settings},
    )  # fmt: skip


def train_toy_expert(
    root: Path, concept: ToyConcept, base: Path, data: Path, name: str, steps: int = KNOWN_ANSWER_STEPS, seed: int = 0,
    random_flip: bool = True, batch_size: int = 8, target_modules: list[str] | None = None,
    learning_rate: float = KNOWN_ANSWER_LR, **settings,
):  # fmt: skip
    """The known-answer expert: DPO settings that move a toy concept in a few hundred CPU steps
    (``target_modules``: where the LoRA sits, default ``DPOConfig``'s, the release's; ``settings``: any other
    ``DPOConfig`` field, the output-preserving term's for one)."""
    from dpo import train_expert

    config = toy_expert_config(
        data, concept.name, base, root / name, root / "cache", max_train_steps=steps, train_batch_size=batch_size,
        learning_rate=learning_rate, seed=seed, random_flip=random_flip,
        **({"target_modules": target_modules} if target_modules else {}), **settings,
    )  # fmt: skip
    return train_expert(config)


def expert_outcome(concept: ToyConcept, base: Path, result) -> dict[str, float]:
    """What the known answer measures: held-out implicit accuracy, the safe share of the trained captions'
    samples before and after the expert, how far the samples of trained and neutral captions moved, and the
    cross-attention key/value LoRAs' ``leak`` (:func:`leak`)."""
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    trained, neutral = [concept.captions[0], concept.held_out[0]], NEUTRAL_CAPTIONS[:2]
    before = sample_latents(pipe, trained), sample_latents(pipe, neutral)
    pipe.load_lora_weights(result.output_dir)
    after = sample_latents(pipe, trained), sample_latents(pipe, neutral)
    pipe.unload_lora_weights()
    lora = load_file(str(Path(result.output_dir) / "pytorch_lora_weights.safetensors"))
    leaked = (
        math.nan
    )  # only where cross-attention reads the text encoder's states (``Family.reads_encoder_states``)
    if _family(pipe).reads_encoder_states:
        leaked = leak(lora, text_states(pipe, list(concept.captions)), text_states(pipe, NEUTRAL_CAPTIONS))
    return {
        "leak": leaked,
        "eval_implicit_acc": result.metrics["eval_implicit_acc"],
        "safe_before": safe_share(pipe, before[0], concept),
        "safe_after": safe_share(pipe, after[0], concept),
        "moved_trained": displacement(*[x[0] for x in (before, after)]),
        "moved_neutral": displacement(*[x[1] for x in (before, after)]),
    }


def known_answer_settings(world) -> dict:
    """The known-answer experts' settings beyond :func:`toy_expert_config`'s for ``world``'s base
    (:data:`KNOWN_ANSWER_BY_FAMILY`)."""
    from dpo.families import family_of

    return dict(KNOWN_ANSWER_BY_FAMILY[family_of(str(world[2])).name])


def train_known_answer_experts(world, **settings) -> list:
    """The DPO known-answer experts, one per seed of ``KNOWN_ANSWER_SEEDS``, in ``world``
    (:func:`make_toy_world`'s tuple): the tests' session experts and ``--known_answer``'s are these. ``settings``:
    any ``DPOConfig`` field (a mutation's, say), over :func:`known_answer_settings`."""
    settings = {**known_answer_settings(world), **settings}
    return [
        train_toy_expert(*world, f"expert-seed-{seed}", seed=seed, **settings) for seed in KNOWN_ANSWER_SEEDS
    ]


def known_answer_report(world) -> dict:
    """The DPO known answer's measures (:func:`expert_outcome`) of :func:`train_known_answer_experts` in
    ``world``, with the kernel family and thread count they were trained in."""
    _, concept, base, _ = world
    outcomes = [expert_outcome(concept, base, expert) for expert in train_known_answer_experts(world)]
    return {
        "base": str(base), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "seeds": list(KNOWN_ANSWER_SEEDS), "outcomes": outcomes,
    }  # fmt: skip


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m dpo.toy",
        description="Pretrain the known-answer world's base into OUTPUT_DIR/base (dpo/data/toy_base and, with "
        "--tiny flux, dpo/data/toy_base_flux were written this way, with ATEN_CPU_CAPABILITY=avx2 and two threads).",
    )
    parser.add_argument("output_dir", type=Path)
    parser.add_argument(
        "--tiny", choices=sorted(TOY_BASES), default="sd15",
        help="the tiny pipeline pretrained: sd15 (the UNet known answer) or flux (the flow one)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    seeds = ", ".join(map(str, KNOWN_ANSWER_SEEDS))
    parser.add_argument(
        "--known_answer", action="store_true",
        help=f"then train the DPO known-answer experts (seeds {seeds}) on the new base and write what they measure "
        "to OUTPUT_DIR/known_answer.json: whether a base rebuilt on this machine passes",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m dpo.toy DIR [--known_answer]``: pretrain the known-answer world's base into ``DIR/base``."""

    def body() -> int:
        args = make_parser().parse_args(argv)
        torch.set_num_threads(args.threads)
        world = make_toy_world(args.output_dir, rebuild=True, tiny=args.tiny)
        print(world[2])
        if args.known_answer:
            report = known_answer_report(world)
            atomic_write_bytes(args.output_dir / "known_answer.json", json.dumps(report, indent=2).encode())
            print(args.output_dir / "known_answer.json")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
