"""Tiny random models, built from configs in code, written as standard Hugging Face folders.

Why: tests, benchmarks and the smoke preset must run offline on a CPU, yet every consumer has to
go through its *real* loading code (``DiffusionPipeline.from_pretrained(dir)``,
``CLIPModel.from_pretrained(dir)``, ``vllm.LLM(model=dir)``), the same call that takes a Hub id.
So this module writes folders that look exactly like Hub checkpoints, only small and random:

- ``sd15``: a Stable Diffusion 1.5-shaped pipeline (UNet2DConditionModel, AutoencoderKL,
  CLIPTextModel, CLIPTokenizer, DDIM scheduler), 32 px by default;
- ``sdxl``: an SDXL-shaped pipeline (two text encoders, pooled embeddings, time ids);
- ``sd3``: a Stable Diffusion 3/3.5-shaped pipeline (MM-DiT ``SD3Transformer2DModel``, two CLIPs with
  projection and a T5 encoder, flow-matching scheduler with SD3's shift, a VAE with a shift factor);
- ``flux``: a FLUX.1-dev-shaped pipeline (``FluxTransformer2DModel`` with double- and single-stream
  blocks and a guidance embedding, CLIP pooled + T5 token states, packed 2x2 latents);
- ``clip``: a CLIPModel (image and text towers) and its CLIPProcessor;
- ``lm``: a Llama-shaped causal LM with a fast byte-level tokenizer and a chat template
  (head_dim 64, which vLLM's CPU attention kernel accepts).

Every builder seeds its own RNG (without touching the global one), so the same seed gives
bit-identical weights in any process.

CLI: ``python -m coprov2.tiny OUT_DIR [--kinds sd15 sdxl clip lm] [--seed 0]``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import string
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from coprov2.canonical import canonicalize_tree
from coprov2.cli import ArgumentParser
from coprov2.errors import UserError, run_cli

KINDS = ("sd15", "sdxl", "sd3", "flux", "clip", "lm")

#: CLIP's context length; the prompt validators of the builder rely on it.
CLIP_MAX_LENGTH = 77
#: Pixel size of the tiny pipelines' default output (UNet sample 16 x VAE factor 2).
TINY_IMAGE_SIZE = 32

LM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _seeded(builder: Callable[..., object]) -> Callable[..., object]:
    """Run ``builder`` under ``torch.manual_seed(seed)`` without disturbing the caller's RNG."""

    def wrapper(seed: int = 0, **kwargs: object) -> object:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(**kwargs)

    wrapper.__name__ = builder.__name__
    wrapper.__doc__ = builder.__doc__
    return wrapper


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP-style BPE tokenizer whose vocabulary is written here, not downloaded.

    The vocabulary holds the 256 byte-level symbols (alone and word-final) and every pair of
    lowercase letters (alone and word-final), so an English word costs about half its length in
    tokens: close enough to real CLIP for the 77-token prompt limit to behave realistically.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs = [a + b for a, b in itertools.product(string.ascii_lowercase, repeat=2)]
    symbols = alphabet + [s + "</w>" for s in alphabet] + pairs + [p + "</w>" for p in pairs]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    merges = [(a, b) for a, b in itertools.product(string.ascii_lowercase, repeat=2)]
    merges += [(a, b + "</w>") for a, b in itertools.product(string.ascii_lowercase, repeat=2)]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int = 32, **kwargs: object) -> CLIPTextConfig:
    """Text-tower config whose vocabulary and special ids match ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def _tiny_vae(shifted: bool = False):
    """A random VAE calibrated like a trained one: a nearly deterministic posterior, unit-variance scaled latents.

    Left at random init, the posterior's std is ~1 (it drowns the image in sampling noise) and the
    scaling factor of SD (0.18215) shrinks latents far below the noise scale; both would make tiny
    training runs behave unlike real ones. ``shifted``: also a ``shift_factor`` (the latents' mean), as
    SD3's and FLUX's VAEs have (``(latent - shift) * scale`` is what their transformers read).
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_IMAGE_SIZE,
    )
    with torch.no_grad():
        logvar = vae.quant_conv.weight.shape[0] // 2
        vae.quant_conv.weight[logvar:] = 0
        vae.quant_conv.bias[logvar:] = -12.0  # posterior std exp(-6), like SD's VAE
        probe = torch.rand(8, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) * 2 - 1
        latents = vae.encode(probe).latent_dist.mean
    vae.register_to_config(scaling_factor=1.0 / latents.std().item())
    if shifted:
        vae.register_to_config(shift_factor=latents.mean().item())
    return vae


def _tiny_unet(**conditioning: object):
    """A two-level UNet (one cross-attention level) on 16x16 latents; ``conditioning`` sets the text side."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **conditioning,
    )


def _sd_scheduler():
    from diffusers import DDIMScheduler

    # SD1.5's noise schedule; steps_offset=1 as in the real checkpoint config.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


@_seeded
def build_sd15():
    """A Stable Diffusion 1.5-shaped pipeline with random weights (safety checker absent)."""
    from diffusers import StableDiffusionPipeline

    tokenizer = clip_tokenizer()
    unet = _tiny_unet(
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@_seeded
def build_sdxl():
    """An SDXL-shaped pipeline: two text encoders (the second with projection), time-id conditioning."""
    from diffusers import StableDiffusionXLPipeline

    tokenizer = clip_tokenizer()
    time_embed_dim = 8
    text_embed_dim = 32
    unet = _tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        # pooled text embedding + 6 time ids (original size, crop, target size), each embedded.
        projection_class_embeddings_input_dim=text_embed_dim + 6 * time_embed_dim,
        cross_attention_dim=2 * text_embed_dim,
        norm_num_groups=1,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer, hidden_size=text_embed_dim)),
        text_encoder_2=CLIPTextModelWithProjection(
            _clip_text_config(tokenizer, hidden_size=text_embed_dim, projection_dim=text_embed_dim)
        ),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def t5_tokenizer() -> T5Tokenizer:
    """A T5-style Unigram tokenizer whose vocabulary is written here: T5's special ids (pad 0, eos 1, unk 2),
    word-initial and inner letters, and every pair of lowercase letters, so words cost a few tokens each."""
    letters = string.ascii_lowercase
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"]
    pieces += ["\u2581" + c for c in letters] + list(letters + string.digits + string.punctuation)
    pieces += [a + b for a, b in itertools.product(letters, repeat=2)]
    vocab = [(piece, 0.0 if index < 3 else -float(len(piece))) for index, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5_encoder(tokenizer: T5Tokenizer, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def _flow_scheduler(**config: object):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


@_seeded
def build_sd3():
    """An SD3/SD3.5-shaped pipeline: MM-DiT with joint attention, CLIP-L and CLIP-G (pooled, projected) and T5."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    width = 32
    transformer = SD3Transformer2DModel(
        sample_size=TINY_IMAGE_SIZE // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=2 * width,  # T5's width; the two CLIPs' states, side by side, are padded to it
        caption_projection_dim=width,
        pooled_projection_dim=2 * width,
        pos_embed_max_size=TINY_IMAGE_SIZE,
    )
    clip = [
        CLIPTextModelWithProjection(
            _clip_text_config(clip_tokenizer(), hidden_size=width, projection_dim=width)
        )
        for _ in range(2)
    ]
    t5 = t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),  # SD3's and SD3.5's scheduler config
        vae=_tiny_vae(shifted=True),
        text_encoder=clip[0],
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip[1],
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(t5, 2 * width),
        tokenizer_3=t5,
    )


@_seeded
def build_flux():
    """A FLUX.1-dev-shaped pipeline: double- and single-stream blocks, a guidance embedding, rotary image/text ids."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    width = 32
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # 4 latent channels, packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=width,
        pooled_projection_dim=width,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    t5 = t5_tokenizer()
    tokenizer = clip_tokenizer()
    return FluxPipeline(
        # FLUX.1-dev's scheduler config: the shift follows the image's token count
        scheduler=_flow_scheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_tiny_vae(shifted=True),
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer, hidden_size=width)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(t5, width),
        tokenizer_2=t5,
        transformer=transformer,
    )


@_seeded
def build_clip() -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model (ViT image tower + text tower) and the processor the CLIP gate loads with it."""
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
        ).to_dict(),
        projection_dim=32,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def lm_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (every byte is a token) and a chat template."""
    specials = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=specials[3:],
        model_max_length=2048,
    )
    tokenizer.chat_template = LM_CHAT_TEMPLATE
    return tokenizer


@_seeded
def build_lm() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A Llama-shaped causal LM (hidden 128, 2 heads: head_dim 64 as vLLM's CPU kernel needs)."""
    tokenizer = lm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config), tokenizer


def build(kind: str, seed: int = 0):
    """Build one tiny model by kind name; pipelines come back alone, the rest as (model, processor)."""
    builders = {
        "sd15": build_sd15,
        "sdxl": build_sdxl,
        "sd3": build_sd3,
        "flux": build_flux,
        "clip": build_clip,
        "lm": build_lm,
    }
    if kind not in builders:
        raise UserError(f"unknown tiny model kind {kind!r}; choose from {', '.join(KINDS)}")
    return builders[kind](seed=seed)


def _move_in(partial: Path, folder: Path, overwrite: bool) -> None:
    """Rename the finished ``partial`` to ``folder``; without ``overwrite``, a whole folder already there
    (another process's, same seed) is kept."""
    if folder.exists() and (overwrite or not (folder / COMPLETE_MARKER).exists()):
        shutil.rmtree(folder, ignore_errors=True)  # replaced, or half-written by a killed run
    try:
        os.replace(partial, folder)
    except OSError:  # a concurrent process renamed its own copy in first: same seed, same bytes
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / COMPLETE_MARKER).exists():
            raise


def write_tiny_models(
    out_dir: str | Path, kinds: Iterable[str] = KINDS, seed: int = 0, overwrite: bool = True
) -> dict[str, Path]:
    """Write each requested tiny model to ``out_dir/<kind>`` and return those folders.

    Each folder loads with the loader a real checkpoint uses (``DiffusionPipeline``,
    ``CLIPModel``/``CLIPProcessor``, ``AutoModelForCausalLM``/``AutoTokenizer``, ``vllm.LLM``).
    """
    out_dir = Path(out_dir)
    folders: dict[str, Path] = {}
    for kind in kinds:
        folder = out_dir / kind
        # Written beside the target and renamed when whole: transformers writes config.json first, so a
        # folder killed mid-write would otherwise look finished to the next run.
        partial = out_dir / f".{kind}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        built = build(kind, seed=seed)
        for part in built if isinstance(built, tuple) else (built,):
            part.save_pretrained(partial)
        canonicalize_tree(partial)
        (partial / COMPLETE_MARKER).write_text("written whole\n")
        _move_in(partial, folder, overwrite)
        folders[kind] = folder
    return folders


TINY_PREFIX = "tiny:"
#: Written last into a tiny model folder: without it the folder is redone.
COMPLETE_MARKER = ".complete"


def resolve_tiny_model(name: str, models_dir: str | Path) -> str:
    """A model id or folder; ``tiny:<kind>`` becomes ``models_dir/<kind>``, written (seed 0) if missing."""
    if not name.startswith(TINY_PREFIX):
        return name
    kind = name.removeprefix(TINY_PREFIX)
    if kind not in KINDS:
        raise UserError(
            f"unknown tiny model {name!r}; choose from {', '.join(TINY_PREFIX + k for k in KINDS)}"
        )
    folder = Path(models_dir) / kind
    if not (folder / COMPLETE_MARKER).exists():  # absent, or left half-written by a killed run
        for leftover in Path(models_dir).glob(f".{kind}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        write_tiny_models(models_dir, [kind], seed=0, overwrite=False)
    return str(folder)


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m coprov2.tiny",
        description="Write tiny random models (offline, seeded) as standard Hugging Face folders, "
        "for tests, benchmarks and the smoke preset. Each lands in OUT_DIR/<kind>.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the models into")
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which models (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = make_parser().parse_args(argv)
        for kind, folder in write_tiny_models(args.out_dir, args.kinds, args.seed).items():
            print(f"{kind}: {folder}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
