"""The tiny model factory: real loaders open its folders, outputs have the right shapes, seeds fix weights."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel, CLIPProcessor

from coprov2.tiny import TINY_IMAGE_SIZE, build, write_tiny_models


def _weights_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.safetensors"))
    }


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("kind", "pipeline_class"), [("sd15", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)]
)
def test_pipeline_round_trip_renders_two_images(tiny_models, kind, pipeline_class):
    pipe = DiffusionPipeline.from_pretrained(tiny_models[kind])
    assert isinstance(pipe, pipeline_class)
    assert _same_state(pipe.unet, build(kind, seed=0).unet)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 0)]
    images = pipe(
        ["a red car in a street", "a blue car in a street"],
        num_inference_steps=2,
        generator=generators,
        output_type="np",
    ).images
    assert images.shape == (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert not (images[0] == images[1]).all(), "different prompts must condition the UNet"


def test_sd15_tokenizer_matches_text_encoder(tiny_models):
    pipe = DiffusionPipeline.from_pretrained(tiny_models["sd15"])
    config, tokenizer = pipe.text_encoder.config, pipe.tokenizer
    assert config.vocab_size == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer.model_max_length == config.max_position_embeddings == 77
    ids = tokenizer("a photo of a cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1], "every character must be in the vocabulary"
    # letter-pair merges: about two characters a token, as with a real CLIP vocabulary
    assert len(ids) - 2 <= len("a photo of a cat") // 2 + 3


def test_clip_round_trip_embeds_images_and_text(tiny_models):
    model = CLIPModel.from_pretrained(tiny_models["clip"])
    processor = CLIPProcessor.from_pretrained(tiny_models["clip"])
    assert _same_state(model, build("clip", seed=0)[0])
    images = [Image.new("RGB", (48, 40), color) for color in ("red", "blue", "green")]
    inputs = processor(text=["a red square", "a blue one"], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_embeds.shape == (3, model.config.projection_dim)
    assert out.text_embeds.shape == (2, model.config.projection_dim)
    assert out.logits_per_image.shape == (3, 2)


def test_lm_round_trip_generates_with_chat_template(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["lm"])
    assert _same_state(model, build("lm", seed=0)[0])
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a prompt."}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>\nWrite a prompt.</s>\n<|assistant|>\n"
    inputs = tokenizer(text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > inputs.input_ids.shape[1]
    assert tokenizer.decode(inputs.input_ids[0]) == text


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    kinds = ["sd15", "clip", "lm"]
    first = write_tiny_models(tmp_path / "a", kinds, seed=3)
    again = write_tiny_models(tmp_path / "b", kinds, seed=3)
    other = write_tiny_models(tmp_path / "c", kinds, seed=4)
    for kind in kinds:
        digest = _weights_digest(first[kind])
        assert digest, f"{kind} wrote no safetensors"
        assert digest == _weights_digest(again[kind])
        assert digest != _weights_digest(other[kind])


def test_building_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("clip", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"'qwen-image'.*sd15, sdxl, sd3, flux, clip, lm"):
        build("qwen-image")


def test_cli_writes_requested_kinds(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "coprov2.tiny", str(tmp_path), "--kinds", "clip", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"clip: {tmp_path / 'clip'}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


@pytest.mark.slow
def test_lm_generates_through_vllm_cpu_engine(tiny_models):
    """vLLM's real CPU engine loads the tiny LM folder and samples under a JSON schema."""
    script = textwrap.dedent(
        f"""
        import json, os
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams
        llm = LLM(model={str(tiny_models["lm"])!r}, dtype="float32", enforce_eager=True,
                  gpu_memory_utilization=0.2, max_model_len=512, seed=0)
        schema = {{"type": "object", "properties": {{"p": {{"type": "string", "maxLength": 20}}}},
                   "required": ["p"], "additionalProperties": False}}
        params = SamplingParams(max_tokens=64, seed=1,
                                structured_outputs=StructuredOutputsParams(json=schema))
        out = llm.chat([{{"role": "user", "content": "hi"}}], params, use_tqdm=False)[0].outputs[0]
        print("RESULT", json.dumps({{"text": out.text, "n": len(out.token_ids)}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    import json

    text = json.loads(line.removeprefix("RESULT "))["text"]
    assert text.startswith('{"p"') or text.lstrip().startswith("{"), text
    assert json.loads(text, strict=False).keys() == {"p"}
