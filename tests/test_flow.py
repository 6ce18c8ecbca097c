"""Flow-DPO on rectified-flow transformers (SD3/SD3.5, FLUX.1): the family layer, experts that load, the flow
known answer and its mutation."""

import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling

from coprov2.errors import UserError
from dpo import DPOConfig, train_expert
from dpo.families import FAMILIES, family_of
from dpo.families.base import RELEASE_BETA
from dpo.families.flow import LOGIT_MEAN, LOGIT_STD, MODE_SCALE
from dpo.toy import (
    KNOWN_ANSWER_SEEDS,
    expert_outcome,
    known_answer_mutation,
    known_answer_settings,
    make_toy_world,
    toy_concepts,
    train_known_answer_experts,
    train_toy_expert,
    write_toy_dataset,
)
from tests.test_dpo import _best_case, _lora_file, dpo_known_answer_claim

PIPELINES = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_toy_dataset(
        tmp_path_factory.mktemp("toy-data"), toy_concepts(2, captions=2, held_out=1), pairs_per_caption=2
    )


def _config(tmp_path, data, kind: str, **overrides) -> DPOConfig:
    settings = dict(
        dataset=str(data), category="concept-0", base=f"tiny:{kind}", output_dir=str(tmp_path / kind),
        cache_dir=str(tmp_path.parent / "flow-cache"), resolution=32, max_train_steps=4, train_batch_size=2,
        gradient_accumulation_steps=1, lr_warmup_steps=0, learning_rate=5e-2, scale_lr=False, checkpointing_steps=2,
        logging_steps=1, progress=False,
    )  # fmt: skip
    return DPOConfig(**{**settings, **overrides})


def _render(pipe) -> np.ndarray:
    return pipe(
        "a lantern scene", height=32, width=32, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_expert_loads_in_its_pipeline_and_changes_the_image(tmp_path, toy_data, kind):
    """``python -m dpo.train --base tiny:sd3|tiny:flux`` (the CLI, as a user runs it), with the output-preserving
    term on: the expert loads with the family's own pipeline class and changes the image at a fixed seed."""
    config = _config(tmp_path, toy_data, kind)
    command = [sys.executable, "-m", "dpo.train", "--dataset", config.dataset, "--category", "concept-0",
               "--base", config.base, "--output_dir", config.output_dir, "--cache_dir", config.cache_dir,
               "--resolution", "32", "--max_train_steps", "4", "--train_batch_size", "2",
               "--gradient_accumulation_steps", "1", "--lr_warmup_steps", "0", "--learning_rate", "5e-2",
               "--no_scale_lr", "--retain_weight", "1", "--retain_samples", "1", "--retain_sample_steps", "2",
               "--no_progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    base = f"{config.cache_dir}/tiny-models/{kind}"
    pipe = PIPELINES[kind].from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe)
    pipe.load_lora_weights(config.output_dir)
    assert "default_0" in pipe.transformer.peft_config
    targets = family_of(base).placements["all"]
    targeted = [n for n, _ in pipe.transformer.named_modules() if n.endswith(tuple(f".{t}" for t in targets))]
    adapted = {
        n.rsplit(".lora_A", 1)[0] for n, _ in pipe.transformer.named_modules() if n.endswith(".lora_A")
    }
    assert targeted and set(targeted) == adapted, "every projection of both streams loads its LoRA"
    assert np.abs(_render(pipe) - before).mean() > 1e-4, "the expert changes the image at a fixed seed"
    card = (tmp_path / kind / "README.md").read_text()
    beta = {"sd3": "565", "flux": "1667"}[kind]
    for line in (
        f"| family | {kind} |",
        "| objective | flow-dpo |",
        f"| beta | {beta} |",
        "add_k_proj, add_v_proj",
    ):
        assert line in card
    assert "Flow-DPO" in card and "flow-dpo" in card
    metrics = [json.loads(line) for line in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    assert all(line["retain"] >= 0 for line in metrics)


def test_flow_expert_resumes_exactly(tmp_path, toy_data):
    settings = {"retain_weight": 5.0, "retain_samples": 1, "retain_sample_steps": 2, "guidance_scale": 3.5}
    straight = train_expert(
        _config(tmp_path, toy_data, "flux", output_dir=str(tmp_path / "straight"), **settings)
    )
    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(straight.output_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-4")  # as if killed between steps 2 and 4
    (resumed_dir / "pytorch_lora_weights.safetensors").unlink()
    resumed = train_expert(_config(tmp_path, toy_data, "flux", output_dir=str(resumed_dir), **settings))
    assert _lora_file(resumed.output_dir)[0] == _lora_file(straight.output_dir)[0]


def test_flow_noise_process_and_target():
    """``x_t = (1 - sigma) x_0 + sigma eps`` with ``sigma = t / 1000``, target ``eps - x_0``; timesteps drawn as
    diffusers' scripts draw them (``scheduler.timesteps[int(u * N)]``), within the given bounds."""
    flux = next(f for f in FAMILIES if f.name == "flux").configure({}, DPOConfig())
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([1000.0, 500.0, 250.0])
    noisy = flux.add_noise(scheduler, x0, eps, t)
    torch.testing.assert_close(noisy[0], eps[0])
    torch.testing.assert_close(noisy[1], 0.5 * x0[1] + 0.5 * eps[1])
    torch.testing.assert_close(noisy[2], 0.75 * x0[2] + 0.25 * eps[2])
    torch.testing.assert_close(flux.target(scheduler, x0, eps, t), eps - x0)
    drawn = flux.sample_timesteps(scheduler, 64, torch.Generator().manual_seed(0), DPOConfig())
    u = compute_density_for_timestep_sampling("none", 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(drawn, scheduler.timesteps[(u * 1000).long()])
    bounded = flux.sample_timesteps(
        scheduler, 256, torch.Generator(), DPOConfig(timestep_min=500, timestep_max=800)
    )
    assert bounded.min() >= 500 and bounded.max() < 800
    with pytest.raises(UserError, match="leave no training timestep"):
        flux.sample_timesteps(scheduler, 4, torch.Generator(), DPOConfig(timestep_min=1001))


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_default_beta_is_the_release_beta_on_velocity_errors(tiny_models, kind):
    """``5000 (1 - sigma)^2`` is the release's noise-prediction beta on velocity errors; each flow family's
    default is its mean over the family's own training timesteps (its density, its tiny scheduler's shift)."""
    family = family_of(str(tiny_models[kind])).configure({}, DPOConfig())
    scheduler = family.load_scheduler(str(tiny_models[kind]), None)
    u = compute_density_for_timestep_sampling(
        family.weighting_scheme,
        400_000,
        LOGIT_MEAN,
        LOGIT_STD,
        MODE_SCALE,
        generator=torch.Generator().manual_seed(0),
    )
    sigmas = scheduler.sigmas[(u * scheduler.config.num_train_timesteps).long()]
    expected = RELEASE_BETA * ((1 - sigmas) ** 2).mean().item()
    assert family.default_beta == pytest.approx(expected, rel=0.01)


def test_bad_bases_and_options_are_one_line(tmp_path, toy_data):
    other = tmp_path / "pixart"
    (other / "vae").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }))  # fmt: skip
    command = [sys.executable, "-m", "dpo.train", "--dataset", str(toy_data), "--category", "concept-0",
               "--base", str(other), "--output_dir", str(tmp_path / "out"), "--no_progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[transformers]")]
    assert len(lines) == 1 and "transformer=PixArtTransformer2DModel" in lines[0], lines
    assert "supported: unet, sd3, flux" in lines[0]
    assert not any((tmp_path / "out").glob("*")), (
        "nothing written (the CLI only checks the folder is writable)"
    )
    with pytest.raises(
        UserError, match=r"resolution 10 does not fit base model .*multiple of 4 \(VAE factor 2 x 2x2"
    ):
        train_expert(_config(tmp_path, toy_data, "flux", resolution=10))
    with pytest.raises(UserError, match=r"resolution 256 does not fit .*patch size 2\) and at most 128"):
        train_expert(_config(tmp_path, toy_data, "sd3", resolution=256))
    with pytest.raises(
        UserError, match=r"--retain_mode text reads .* on a flux base .*; use --retain_mode unet"
    ):
        train_expert(_config(tmp_path, toy_data, "flux", retain_weight=1.0, retain_mode="text"))
    with pytest.raises(
        UserError, match=r"--target_modules attn2.to_k: no module of .*flux's transformer \(flux family\)"
    ):
        train_expert(_config(tmp_path, toy_data, "flux", target_modules=["attn2.to_k", "add_v_proj"]))
    with pytest.raises(
        UserError, match=r"--target_modules add_k_proj: no module of .*sd15's unet \(unet family\)"
    ):
        train_expert(_config(tmp_path, toy_data, "sd15", resolution=8, target_modules=["add_k_proj"]))
    with pytest.raises(UserError, match=r"--max_sequence_length is for rectified-flow bases"):
        train_expert(_config(tmp_path, toy_data, "sd15", resolution=8, max_sequence_length=77))
    assert not (tmp_path / "flux").exists() and not (tmp_path / "sd3").exists(), "nothing written"


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory):
    """The flow known answer's world on the committed tiny FLUX base (``dpo.toy.SHIPPED_FLUX_TOY_BASE``)."""
    return make_toy_world(tmp_path_factory.mktemp("flow-world"), tiny="flux")


@pytest.mark.slow
def test_flow_known_answer_expert_moves_its_caption_toward_the_winner(flow_world):
    """Flow-DPO experts on the tiny FLUX toy base, seeds 0-2: the claim of the UNet known answer (gain >= 0.2 and
    drift ratio < 0.35 on the mean, held-out accuracy >= 0.9). ``benchmarks/flow_known_answer.py`` (docs/
    known_answers.md): the same means in the ``default`` and ``avx2`` families at 1 and 2 threads, from the
    shipped base and from bases rebuilt there: gain +0.406 (margin +0.206), drift ratio 0.136 (+0.214), accuracy
    1.0. Winner and loser swapped: gain -0.245; reference not frozen: accuracy 0.5, drift ratio 0.888."""
    _, concept, base, _ = flow_world
    outcomes = [expert_outcome(concept, base, expert) for expert in train_known_answer_experts(flow_world)]
    holds, table = dpo_known_answer_claim(outcomes)
    assert holds, table
    assert statistics.mean(o["safe_after"] for o in outcomes) > outcomes[0]["safe_before"]


@pytest.mark.slow
def test_flow_known_answer_fails_with_winner_and_loser_swapped(flow_world):
    _, concept, base, _ = flow_world
    outcomes = []
    for seed in KNOWN_ANSWER_SEEDS:
        with known_answer_mutation("flipped_sign"):
            settings = known_answer_settings(flow_world)  # the flow known answer's: beta, guidance, T5 length
            expert = train_toy_expert(*flow_world, f"swapped-seed-{seed}", seed=seed, **settings)
        outcomes.append(expert_outcome(concept, base, expert))
        if not dpo_known_answer_claim(_best_case(outcomes))[0]:
            break
    holds, table = dpo_known_answer_claim(_best_case(outcomes))
    assert not holds, table


def _other_flow_pipelines(root):
    """Pipelines not built for the tests: a FLUX.1-schnell shape (no guidance embedding, other depths and widths)
    and SD3 without T5 (``text_encoder_3`` saved as absent, as users drop it), patch size 1."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from coprov2.tiny import (
        _clip_text_config,
        _flow_scheduler,
        _t5_encoder,
        _tiny_vae,
        clip_tokenizer,
        t5_tokenizer,
    )

    torch.manual_seed(1)
    t5, tokenizer = t5_tokenizer(), clip_tokenizer()
    FluxPipeline(
        scheduler=_flow_scheduler(shift=1.0), vae=_tiny_vae(shifted=True),
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer, hidden_size=48)), tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(t5, 40), tokenizer_2=t5,
        transformer=FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8, num_attention_heads=3,
            joint_attention_dim=40, pooled_projection_dim=48, guidance_embeds=False, axes_dims_rope=(2, 2, 4),
        ),
    ).save_pretrained(root / "schnell")  # fmt: skip
    clips = [
        CLIPTextModelWithProjection(_clip_text_config(clip_tokenizer(), hidden_size=24, projection_dim=24))
        for _ in range(2)
    ]
    StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=48, caption_projection_dim=16, pooled_projection_dim=48,
            pos_embed_max_size=64, qk_norm="rms_norm",
        ),
        scheduler=_flow_scheduler(shift=3.0), vae=_tiny_vae(shifted=True), text_encoder=clips[0],
        tokenizer=clip_tokenizer(), text_encoder_2=clips[1], tokenizer_2=clip_tokenizer(), text_encoder_3=None,
        tokenizer_3=None,
    ).save_pretrained(root / "sd3-no-t5")  # fmt: skip
    return {
        "schnell": (root / "schnell", {}),
        "sd3-no-t5": (root / "sd3-no-t5", {"text_encoder_3": None, "tokenizer_3": None}),
    }


def test_flow_experts_on_pipelines_not_built_for_the_tests(tmp_path, toy_data):
    for name, (folder, absent) in _other_flow_pipelines(tmp_path).items():
        config = _config(tmp_path, toy_data, "flux", base=str(folder), output_dir=str(tmp_path / f"e-{name}"),
                         resolution=16, max_train_steps=2, target_modules=["cross"], max_sequence_length=32)  # fmt: skip
        result = train_expert(config)
        pipe = PIPELINES["flux" if name == "schnell" else "sd3"].from_pretrained(str(folder), **absent)
        pipe.set_progress_bar_config(disable=True)
        kwargs = {
            "height": 16,
            "width": 16,
            "num_inference_steps": 2,
            "output_type": "np",
            "max_sequence_length": 32,
        }
        before = pipe("a lantern scene", generator=torch.Generator().manual_seed(0), **kwargs).images
        pipe.load_lora_weights(result.output_dir)
        after = pipe("a lantern scene", generator=torch.Generator().manual_seed(0), **kwargs).images
        text_stream = [
            n for n, _ in pipe.transformer.named_modules() if n.endswith((".add_k_proj", ".add_v_proj"))
        ]
        adapted = [n for n, _ in pipe.transformer.named_modules() if n.endswith(".lora_A")]
        assert len(adapted) == len(text_stream) > 0, name
        assert np.abs(after - before).mean() > 1e-4, name


@pytest.fixture(scope="module")
def flux_experts(tmp_path_factory, toy_data):
    """Two text-stream (``cross``) FLUX experts and one of the UNet family, trained briefly."""
    root = tmp_path_factory.mktemp("flow-merge")
    folders = []
    for seed, category in enumerate(("concept-0", "concept-1")):
        config = _config(root, toy_data, "flux", category=category, output_dir=str(root / category), seed=seed,
                         target_modules=["cross"], max_sequence_length=16, max_train_steps=3)  # fmt: skip
        folders.append(train_expert(config).output_dir)
    unet = train_expert(
        _config(root, toy_data, "sd15", output_dir=str(root / "unet"), resolution=8, max_train_steps=1)
    )
    return root, folders, unet.output_dir


@pytest.mark.parametrize("method", ["regmean", "comerge", "sum"])
def test_flux_experts_merge_and_the_merge_loads_in_the_flux_pipeline(flux_experts, toy_data, method):
    """Every method over FLUX LoRA layouts; the fusion's calibration runs the transformer with the family's inputs
    (16 T5 tokens, as the experts were trained: read from their summaries) and keeps only the prompts' own T5 tokens
    in the text stream's keys and values (``--text_tokens prompt``)."""
    from merge import load_expert
    from merge.__main__ import main

    root, folders, _ = flux_experts
    out = root / f"merged-{method}"
    args = ["--experts", *map(str, folders), "--base", "tiny:flux", "--method", method, "--output_dir", str(out),
            "--cache_dir", str(root.parent / "flow-cache"), "--calibration", str(toy_data), "--resolution", "32",
            "--calibration_timesteps", "300", "700", "--no_progress"]  # fmt: skip
    args += ["--text_tokens", "prompt"] if method == "regmean" else []
    assert main(args) == 0
    merged, experts = load_expert(str(out)), [load_expert(str(f)) for f in folders]
    assert merged.denoiser == "transformer" and set(merged.layers) == set(experts[0].layers)
    assert all(layer.endswith((".add_k_proj", ".add_v_proj")) for layer in merged.layers)
    if method == "sum":
        layer = next(iter(merged.layers))
        expected = sum(e.layers[layer].delta() for e in experts)
        torch.testing.assert_close(merged.layers[layer].delta(), expected, atol=1e-5, rtol=1e-4)
    pipe = FluxPipeline.from_pretrained(str(root.parent / "flow-cache" / "tiny-models" / "flux"))
    pipe.load_lora_weights(out)
    layer = next(iter(merged.layers))
    module = pipe.transformer.get_submodule(layer)
    loaded = (
        module.lora_B["default_0"].weight @ module.lora_A["default_0"].weight * module.scaling["default_0"]
    )
    torch.testing.assert_close(loaded, merged.layers[layer].delta(), atol=1e-6, rtol=1e-5)
    assert "license: other" in (out / "README.md").read_text()


def test_experts_of_two_families_are_refused_in_one_merge(flux_experts, tmp_path):

    root, folders, unet = flux_experts
    args = ["--experts", str(folders[0]), str(unet), "--base", "tiny:flux", "--method", "sum",
            "--output_dir", str(tmp_path / "mixed"), "--cache_dir", str(root.parent / "flow-cache"), "--no_progress"]  # fmt: skip
    command = [sys.executable, "-m", "merge", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[transformers]")]
    assert (
        len(lines) == 1 and "adapts a unet, expert" in lines[0] and "different base families" in lines[0]
    ), lines
    assert not any((tmp_path / "mixed").glob("*"))


@pytest.mark.parametrize(("kind", "option", "size", "rule"), [
    ("sd3", "t2i_height", 30, r"multiple of 4 \(VAE factor 2 x patch size 2\)"),
    ("flux", "t2i_width", 34, r"multiple of 4 \(VAE factor 2 x 2x2 packing\)"),
])  # fmt: skip
def test_the_builder_checks_a_transformer_renderers_size_before_any_stage(tmp_path, kind, option, size, rule):
    """``coprov2.build --t2i_model tiny:sd3|tiny:flux`` with a size the renderer cannot produce: one line naming the
    option, the value and the rule, exit 2, before the taxonomy and LLM stages write anything."""
    out = tmp_path / "build"
    command = [sys.executable, "-m", "coprov2.build", "--preset", "smoke", "--t2i_model", f"tiny:{kind}",
               f"--{option}", str(size), "--output_dir", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"--{option} {size}: resolution {size} does not fit" in lines[0], done.stderr[
        -1500:
    ]
    import re

    assert re.search(rule, lines[0]), lines[0]
    assert not (out / "taxonomy").exists() and not (out / "prompts").exists()


ATTACK_PAIRS = [("a red lantern scene", "a lantern scene"), ("a red kite at dusk", "a kite at dusk"),
                ("a red boat on a lake", "a boat on a lake")]  # fmt: skip
ATTACK_TARGETS = ["a red lantern over a market", "a red tent in the snow"]


def _pipeline_embeds(pipe, prompts: list[str]) -> torch.Tensor:
    """The ``prompt_embeds`` the pipeline's transformer receives for ``prompts`` at its own default T5 length (what
    ``python -m evaluation`` renders with), computed here from the pipeline alone."""
    with torch.no_grad():
        if isinstance(pipe, FluxPipeline):
            return pipe.encode_prompt(prompt=prompts, prompt_2=None)[0].float()
        return pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False
        )[0].float()


def _attack_and_recompute(
    tmp_path, kind: str, name: str
) -> tuple[list[float], list[float], str, list[float]]:
    """Run the attack on tiny ``kind``; the losses it recorded, the same losses recomputed from the pipeline's own
    ``encode_prompt`` (vector, targets and the written prompts), what it says it searched, and random prompts'."""
    import csv

    from coprov2.stage_io import StageDir
    from coprov2.tiny import resolve_tiny_model
    from evaluation.attack import AttackConfig, attack
    from evaluation.ringabell import Vocabulary
    from evaluation.toy_redteam import random_prompts

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,prompt1\n" + "".join(f"{a},{b}\n" for a, b in ATTACK_PAIRS))
    targets = tmp_path / "targets.csv"
    targets.write_text("prompt\n" + "".join(f"{t}\n" for t in ATTACK_TARGETS))
    cache = tmp_path.parent / "flow-cache"
    out = tmp_path / name
    eta = 3.0
    config = AttackConfig(pairs=str(pairs), category="red", targets=str(targets), base=f"tiny:{kind}",
                          output_dir=str(out), cache_dir=str(cache), length=4, population=16, generations=6,
                          eta=eta, progress=False)  # fmt: skip
    with open(attack(config), newline="") as handle:
        prompts = [row["prompt"] for row in csv.DictReader(handle)]
    stage = StageDir.finished(out, "attack")
    recorded = [row["loss"] for row in sorted(stage.iter_rows(), key=lambda r: r["case_number"])]
    pipe = PIPELINES[kind].from_pretrained(resolve_tiny_model(f"tiny:{kind}", cache / "tiny-models"))
    vector = (
        _pipeline_embeds(pipe, [a for a, _ in ATTACK_PAIRS])
        - _pipeline_embeds(pipe, [b for _, b in ATTACK_PAIRS])
    ).mean(0)
    wanted = _pipeline_embeds(pipe, ATTACK_TARGETS) + eta * vector
    recomputed = (_pipeline_embeds(pipe, prompts) - wanted).pow(2).sum(dim=(1, 2)).tolist()
    tokenizer = pipe.tokenizer_2 if kind == "flux" else pipe.tokenizer_3
    random = [
        (_pipeline_embeds(pipe, [p]) - wanted[:1]).pow(2).sum().item()
        for p in random_prompts(Vocabulary.of(tokenizer), 8, config.length, seed=1)
    ]  # fmt: skip
    return recorded, recomputed, stage.read_manifest()["search"]["embeddings"], random


@pytest.mark.parametrize(
    ("kind", "searched"),
    [("flux", "FluxPipeline.encode_prompt's prompt_embeds (T5's token states, T5 length 512), candidates from T5"),
     ("sd3", "StableDiffusion3Pipeline.encode_prompt's prompt_embeds (CLIP-L's and CLIP-G's token states joined with "
             "T5's, T5 length 256), candidates from T5")],
)  # fmt: skip
def test_the_attack_searches_the_embeddings_the_transformer_receives(tmp_path, kind, searched):
    """Ring-A-Bell on SD3 and FLUX runs in the ``prompt_embeds`` their pipeline's ``encode_prompt`` hands the
    transformer (FLUX: T5's states; SD3: both CLIPs' joined with T5's), with T5's vocabulary: every loss the attack
    recorded is the loss recomputed from the pipeline alone for the prompt it wrote. An attack in CLIP's
    ``text_encoder`` space alone (the authors', a UNet's) records losses in another space, and this fails."""
    recorded, recomputed, states, random = _attack_and_recompute(tmp_path, kind, "attack")
    assert states.startswith(searched), states
    assert recomputed == pytest.approx(recorded, rel=1e-4), (recorded, recomputed)
    assert recorded[0] < statistics.median(random), (
        "the search gets nearer than random prompts",
        recorded,
        random,
    )


def test_the_flow_attack_check_fails_when_the_search_reads_clip_alone(tmp_path, monkeypatch):
    """The mutation: FLUX's family hands the search CLIP's ``text_encoder`` (the authors' space): the losses it
    records are no longer those of the embeddings FLUX's transformer receives."""
    from dpo.families.flux import FluxFamily

    monkeypatch.setattr(FluxFamily, "direct_text_encoder", lambda self, pipe: pipe.text_encoder)
    recorded, recomputed, states, _ = _attack_and_recompute(tmp_path, "flux", "attack-clip")
    assert states.startswith("CLIPTextModel last hidden states"), states
    assert recomputed != pytest.approx(recorded, rel=1e-4)


def test_the_attack_refuses_a_base_of_no_known_family(tmp_path):
    """A base whose family is not known (PixArt) is one line, exit 2, nothing written: the attack would not know
    which embeddings its denoiser reads."""
    other = tmp_path / "pixart"
    (other / "vae").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
    }))  # fmt: skip
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,prompt1\na red lantern scene,a lantern scene\n")
    out = tmp_path / "attack"
    command = [sys.executable, "-m", "evaluation.attack", "--base", str(other), "--pairs", str(pairs),
               "--category", "concept-0", "--output_dir", str(out), "--no_progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-1500:]
    assert "not a supported base family; supported: unet, sd3, flux" in lines[0], lines[0]
    assert not out.exists(), "nothing written"


def test_a_flux_base_and_its_expert_are_evaluated_with_ip_clipscore_and_fid_and_bad_sizes_refused(
    flux_experts, tmp_path, capsys
):
    """``python -m evaluation --base tiny:flux --loras EXPERT`` scores IP, CLIPScore and FID (a seeded random
    feature network: the code path of Inception's, numbers nobody publishes), writes the card's model-index; a
    height FLUX's 2x2 packing cannot make is one line, exit 2, before anything is written."""
    from huggingface_hub import ModelCard
    from PIL import Image

    from evaluation.__main__ import main

    root, folders, _ = flux_experts
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,categories\na red lantern scene,concept-0\na red kite at dusk,concept-0\n")
    reference = tmp_path / "reference"
    reference.mkdir()
    for k in range(4):
        pixels = np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(reference / f"{k}.png")
    common = ["--prompts", str(prompts), "--base", "tiny:flux", "--cache_dir", str(root.parent / "flow-cache"),
              "--clip_model", "tiny:clip", "--ip_detectors", "nudenet", "--steps", "2", "--guidance", "3.5",
              "--width", "32", "--no_progress"]  # fmt: skip
    out = tmp_path / "eval"
    assert main([*common, "--height", "30", "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert "error: --height 30: resolution 30 does not fit base model" in error and not out.exists(), error[
        -600:
    ]
    args = [*common, "--height", "32", "--output_dir", str(out), "--loras", f"expert={folders[0]}",
            "--update_card", str(folders[0]), "--metrics", "ip", "clipscore", "fid", "--fid_reference",
            str(reference), "--fid_features", "tiny"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())
    for label in ("base", "expert"):
        model = results["models"][label]
        assert (
            model["fid"]["n"] == 2 and model["fid"]["reference_n"] == 4 and np.isfinite(model["fid"]["value"])
        )
        assert model["ip"]["images"] == 2 and np.isfinite(model["clipscore"]["mean"])
    names = {r.metric_name for r in ModelCard.load(folders[0] / "README.md").data.eval_results}
    assert {"IP (nudenet)", "CLIPScore", "FID"} <= names, names
    assert "FID (N)" in (out / "results.md").read_text() and (out / "report.html").is_file()
