"""dpo/: the loss, the adapters-off reference, LoRA I/O through diffusers, resume, bad inputs, and the
known-answer test in the toy world (dpo/toy.py) with its two mutations."""

import copy
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig

from dpo import DPOConfig, train_expert
from dpo.data import load_preference_pairs
from dpo.families.unet import UNetFamily
from dpo.loss import diffusion_dpo_loss
from dpo.toy import (
    KNOWN_ANSWER_SEEDS,
    MUTATIONS,
    TOY_RESOLUTION,
    expert_outcome,
    known_answer_mutation,
    toy_concepts,
    train_toy_expert,
    write_toy_dataset,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
UNET = UNetFamily()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_toy_dataset(
        tmp_path_factory.mktemp("toy-data"), toy_concepts(2, captions=2, held_out=1), pairs_per_caption=2
    )


def _config(tmp_path, data, **overrides) -> DPOConfig:
    settings = {
        "dataset": str(data),
        "category": "concept-0",
        "base": "tiny:sd15",
        "output_dir": str(tmp_path / "expert"),
        "cache_dir": str(tmp_path.parent / "dpo-cache"),
        "resolution": TOY_RESOLUTION,
        "max_train_steps": 4,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr_warmup_steps": 0,
        "learning_rate": 1e-3,
        "scale_lr": False,
        "checkpointing_steps": 2,
        "logging_steps": 1,
        "progress": False,
    }
    return DPOConfig(**{**settings, **overrides})


def test_loss_known_answer():
    target = torch.zeros(4, 1, 1, 1)
    # winners (rows 0, 1) then losers (rows 2, 3); per-sample errors are the squares below.
    model = torch.tensor([1.0, 2.0, 3.0, 1.0]).view(4, 1, 1, 1).sqrt()
    ref = torch.tensor([2.0, 2.0, 2.0, 2.0]).view(4, 1, 1, 1).sqrt()
    out = diffusion_dpo_loss(model, ref, target, beta=0.5)
    inside = torch.tensor([-0.25 * ((1 - 3) - 0), -0.25 * ((2 - 1) - 0)])  # [0.5, -0.25]
    assert out.loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(inside).mean().item())
    assert out.metrics["implicit_acc"] == 0.5
    assert out.metrics["reward_margin"] == pytest.approx(0.125)
    assert out.metrics["model_gap"] == pytest.approx(-0.5) and out.metrics["ref_gap"] == 0
    same = diffusion_dpo_loss(ref, ref, target, beta=5000)
    assert same.loss.item() == pytest.approx(math.log(2)) and same.metrics["implicit_acc"] == 0.5


def test_reference_with_adapters_disabled_is_the_base_unet_exactly(tiny_models):
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd15"], subfolder="unet")
    base = copy.deepcopy(unet)
    unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = base(sample, t, text).sample
        adapted = unet(sample, t, text).sample
        unet.disable_adapters()
        disabled = unet(sample, t, text).sample
        unet.enable_adapters()
    assert not torch.equal(adapted, expected), "the adapter changes the output"
    assert torch.equal(disabled, expected)


def test_expert_loads_with_load_lora_weights_and_keeps_alpha(tmp_path, toy_data):
    config = _config(tmp_path, toy_data, rank=4, lora_alpha=8, learning_rate=5e-2)
    result = train_expert(config)
    folder = result.output_dir
    assert (folder / "pytorch_lora_weights.safetensors").exists()
    base = config.cache_dir + "/tiny-models/sd15"
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(folder)
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8

    # The same weights, read back from the last checkpoint into a fresh UNet through peft.
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=UNET.target_modules(config.target_modules)))
    set_peft_model_state_dict(unet, load_file(folder / "checkpoints" / "step-4" / "lora_peft.safetensors"))
    sample, text, t = torch.randn(1, 4, 4, 4), torch.randn(1, 77, 32), torch.tensor([500])
    with torch.no_grad():
        assert torch.allclose(pipe.unet(sample, t, text).sample, unet(sample, t, text).sample, atol=1e-6)
        unet.disable_adapters()
        assert not torch.allclose(pipe.unet(sample, t, text).sample, unet(sample, t, text).sample, atol=1e-4)

    card = (folder / "README.md").read_text()
    assert "base_model: tiny:sd15" in card and "category-concept-0" in card and "| beta | 5000 |" in card
    assert f"| train_implicit_acc | {result.metrics['train_implicit_acc']:.4g} |" in card
    assert "eval_implicit_acc" in result.metrics, "held-out split measured"
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert set(lines[0]) >= {"loss", "implicit_acc", "reward_margin", "model_gap", "ref_gap"}


def test_release_layout_is_read_through_the_same_entry(tmp_path, toy_data):
    from coprov2.dataset.release_layout import export_release_layout

    ours = load_preference_pairs(str(toy_data))
    release = tmp_path / "release_pickapic_formatted"
    export_release_layout(toy_data, release)
    theirs = load_preference_pairs(str(release))
    assert theirs.captions == ours.captions and theirs.categories == ours.categories
    assert theirs.decode(0, "safe").size == (TOY_RESOLUTION, TOY_RESOLUTION)
    assert (
        load_preference_pairs(str(release / "CoProv2_test.csv")).captions
        == load_preference_pairs(str(toy_data), split="test").captions
    )


def test_bad_inputs_fail_before_training(tmp_path, toy_data):
    with pytest.raises(
        ValueError, match=r"category 'hate' is not in .*known categories: concept-0, concept-1 \(or all\)"
    ):
        train_expert(_config(tmp_path, toy_data, category="hate"))
    with pytest.raises(ValueError, match=r"resolution 10 does not fit base model .*multiple of 4"):
        train_expert(_config(tmp_path, toy_data, resolution=10))
    with pytest.raises(ValueError, match=r"--beta must be > 0, got 0"):
        _config(tmp_path, toy_data, beta=0)
    with pytest.raises(ValueError, match=r"--learning_rate must be > 0, got -1"):
        _config(tmp_path, toy_data, learning_rate=-1)

    import datasets

    bad = tmp_path / "bad"
    rows = datasets.load_dataset(str(toy_data), split="train")
    rows.remove_columns("safe_image").to_parquet(str(bad / "data" / "train-0.parquet"))
    with pytest.raises(ValueError, match=r"not a CoProV2 dataset, columns \['safe_image'\] are missing"):
        load_preference_pairs(str(bad))

    corrupt = tmp_path / "corrupt"
    export_dir = corrupt / "release"
    from coprov2.dataset.release_layout import export_release_layout

    export_release_layout(toy_data, export_dir)
    (export_dir / "images" / "u_idx_0000001_0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(
        ValueError, match=r"row 1 \('a lantern scene, view 0'\): the unsafe image does not decode"
    ):
        train_expert(_config(tmp_path, export_dir, cache_dir=str(tmp_path / "fresh-cache")))
    assert not (tmp_path / "expert" / "checkpoints").exists(), "nothing trained"


def test_sdxl_expert_trains_and_loads(tmp_path, toy_data):
    config = _config(tmp_path, toy_data, base="tiny:sdxl", max_train_steps=2)
    folder = train_expert(config).output_dir
    pipe = DiffusionPipeline.from_pretrained(config.cache_dir + "/tiny-models/sdxl")
    pipe.load_lora_weights(folder)
    assert "default_0" in pipe.unet.peft_config


def _cli(config_dir: Path, data: Path, cache: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "dpo.train", "--dataset", str(data), "--category", "concept-0", "--base", "tiny:sd15",
        "--output_dir", str(config_dir), "--cache_dir", str(cache), "--resolution", str(TOY_RESOLUTION),
        "--max_train_steps", str(steps), "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--lr_warmup_steps", "3", "--learning_rate", "1e-3", "--checkpointing_steps", "5", "--no_progress",
    ]  # fmt: skip


def _lora_file(folder: Path) -> tuple[dict, dict]:
    """Tensors (as bytes) and metadata of a LoRA file; safetensors orders metadata keys differently per process."""
    from safetensors import safe_open

    with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as handle:
        tensors = {key: handle.get_tensor(key).numpy().tobytes() for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return tensors, handle.metadata()


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_lora(tmp_path, toy_data):
    cache = tmp_path / "cache"
    steps = 30  # the kill lands after step 15, mid-run
    reference = subprocess.run(
        _cli(tmp_path / "straight", toy_data, cache, steps), capture_output=True, text=True, env=ENV
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        _cli(resumed, toy_data, cache, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    deadline = time.monotonic() + 120
    while not (resumed / "checkpoints" / "step-15").exists():  # between two logs (every 10 steps)
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended before it could be killed"
        )
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (resumed / "pytorch_lora_weights.safetensors").exists()
    again = subprocess.run(_cli(resumed, toy_data, cache, steps), capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    assert (resumed / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()
    assert _lora_file(resumed) == _lora_file(tmp_path / "straight")

    changed = subprocess.run(
        [*_cli(resumed, toy_data, cache, steps + 5), "--beta", "100"], capture_output=True, text=True, env=ENV
    )
    assert (
        changed.returncode == 2
        and "was trained with other settings (beta, max_train_steps)" in changed.stderr
    )


def dpo_known_answer_claim(outcomes: list[dict[str, float]]) -> tuple[bool, str]:
    """The DPO known answer on the mean over seeds, and the per-seed table that explains a failure.

    The experts train with the output-preserving term (``dpo.toy.KNOWN_ANSWER_RETAIN``, weight 1). Measured by
    ``benchmarks/kernel_families.py`` (docs/known_answers.md), seeds 0-2: from the shipped
    base, the same means in the ``default`` and ``avx2`` families at 1 and 2 threads: gain 0.250 (margin
    +0.050, the tightest), drift ratio 0.271 (+0.079), held-out accuracy 1.0. From a base rebuilt in each
    family and thread count the gain is 0.250-0.370 and the drift ratio 0.176-0.271. Under either mutation the mean fails
    (``--mutation``: flipped sign, gain -0.318; reference not frozen, accuracy 0.5 and drift ratio 1.23).
    """
    gains = [o["safe_after"] - o["safe_before"] for o in outcomes]
    ratios = [o["moved_neutral"] / o["moved_trained"] for o in outcomes]
    accuracy = statistics.mean(o["eval_implicit_acc"] for o in outcomes)
    holds = accuracy >= 0.9 and statistics.mean(gains) >= 0.2 and statistics.mean(ratios) < 0.35
    table = "; ".join(
        f"seed {seed}: acc {o['eval_implicit_acc']:.3f} safe {o['safe_before']:.3f}->{o['safe_after']:.3f} "
        f"gain {gain:+.3f} drift ratio {ratio:.3f}"
        for seed, o, gain, ratio in zip(KNOWN_ANSWER_SEEDS, outcomes, gains, ratios, strict=True)
    )
    means = f"mean: acc {accuracy:.3f} gain {statistics.mean(gains):+.3f} drift ratio {statistics.mean(ratios):.3f}"
    return holds, f"{table}; {means} (claim: acc >= 0.9, gain >= 0.2, drift ratio < 0.35)"


@pytest.mark.slow
def test_known_answer_expert_moves_its_caption_toward_the_winner(toy_world, toy_experts):
    _, concept, base, _ = toy_world
    holds, table = dpo_known_answer_claim([expert_outcome(concept, base, expert) for expert in toy_experts])
    assert holds, table


def _best_case(outcomes: list[dict[str, float]]) -> list[dict[str, float]]:
    """``outcomes`` completed to every seed of ``KNOWN_ANSWER_SEEDS`` with the best outcome a seed can have
    (held-out accuracy 1, every sample on the safe side, no neutral drift): the claim that fails on these
    fails on the mean whatever the seeds not yet trained would give."""
    best = {"eval_implicit_acc": 1.0, "safe_before": outcomes[0]["safe_before"], "safe_after": 1.0}
    best |= {"moved_neutral": 0.0, "moved_trained": 1.0}
    return outcomes + [best] * (len(KNOWN_ANSWER_SEEDS) - len(outcomes))


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_known_answer_fails_under_mutation(toy_world, mutation):
    """The claim fails on the mean over the seeds; seeds are trained until it fails whatever the rest give."""
    _, concept, base, _ = toy_world
    outcomes: list[dict[str, float]] = []
    for seed in KNOWN_ANSWER_SEEDS:
        with known_answer_mutation(mutation):
            expert = train_toy_expert(*toy_world, f"{mutation}-seed-{seed}", seed=seed)
        outcomes.append(expert_outcome(concept, base, expert))
        if not dpo_known_answer_claim(_best_case(outcomes))[0]:
            break
    holds, table = dpo_known_answer_claim(_best_case(outcomes))
    assert not holds, table


def test_expert_push_is_private_and_leaves_checkpoints_local(tmp_path, toy_data, monkeypatch):
    from tests.mock_hub import install_mock_hub

    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890abcdef")
    hub = install_mock_hub(monkeypatch)
    train_expert(_config(tmp_path, toy_data, max_train_steps=2, push_to_hub="me/violence-expert"))
    assert hub.created == [
        {"name": "violence-expert", "organization": "me", "visibility": "private", "type": "model"}
    ]
    assert hub.settings == [], "models are not gated"
    assert set(hub.committed) == {
        "README.md",
        "metrics.jsonl",
        "pytorch_lora_weights.safetensors",
        "training_summary.json",
    }
    assert all(b"hf_FAKEtoken" not in content for content in hub.committed.values())


def test_each_trains_one_expert_per_category_and_checkpointing_changes_nothing(tmp_path, toy_data):
    results = train_expert(_config(tmp_path, toy_data, max_train_steps=2, gradient_checkpointing=True))
    plain = train_expert(_config(tmp_path, toy_data, max_train_steps=2, output_dir=str(tmp_path / "plain")))
    assert _lora_file(results.output_dir)[0] == _lora_file(plain.output_dir)[0]

    from dpo import train_experts

    each = train_experts(
        _config(tmp_path, toy_data, category="each", max_train_steps=1, output_dir=str(tmp_path / "each"))
    )
    assert [r.category for r in each] == ["concept-0", "concept-1"]
    assert all(
        (tmp_path / "each" / c / "pytorch_lora_weights.safetensors").exists()
        for c in ("concept-0", "concept-1")
    )


@pytest.mark.slow
def test_two_processes_train_one_expert(tmp_path, toy_data):
    """``accelerate launch --multi_gpu`` on CPU: DDP over gloo, one expert written by the main process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command = [*launcher, "-m", "dpo.train", *_cli(tmp_path / "ddp", toy_data, tmp_path / "cache", 4)[3:]]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-12000:]
    assert json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    assert {p.name for p in (tmp_path / "ddp").glob("checkpoints/step-*/random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }, "both ranks saved their RNG state"
    DiffusionPipeline.from_pretrained(str(tmp_path / "cache" / "tiny-models" / "sd15")).load_lora_weights(
        tmp_path / "ddp"
    )


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, toy_data, monkeypatch):
    import dpo.trainer
    from coprov2.errors import UserError
    from dpo.loss import DPOLossOutput

    calls = {"n": 0}
    real = dpo.trainer.diffusion_dpo_loss

    def nan_from_step_3(*args, **kwargs):
        output = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 2 * 2:  # two micro-batches per step: steps 1 and 2 stay finite
            return DPOLossOutput(output.loss * math.nan, {**output.metrics, "loss": math.nan})
        return output

    monkeypatch.setattr(dpo.trainer, "diffusion_dpo_loss", nan_from_step_3)
    with pytest.raises(UserError, match=r"the loss became nan at step 3; .*step-2"):
        train_expert(_config(tmp_path, toy_data, max_train_steps=6))
    expert = tmp_path / "expert"
    assert [p.name for p in sorted((expert / "checkpoints").iterdir())] == ["step-2"]
    assert not (expert / "pytorch_lora_weights.safetensors").exists()


def test_random_flip_caches_both_orientations_and_trains_on_flipped_images(
    tmp_path, toy_data, tiny_models, monkeypatch
):
    import numpy as np

    from dpo.encode import CachedRows, encode_pairs, load_encoded, resize_and_crop

    pairs = load_preference_pairs(str(toy_data))
    pipe = DiffusionPipeline.from_pretrained(str(tiny_models["sd15"]))
    encode_pairs(
        pipe, UNET, pairs, TOY_RESOLUTION, torch.device("cpu"), tmp_path, progress=False, flipped=True
    )
    encoded = load_encoded(tmp_path, flipped=True)
    n = len(pairs)
    assert len(encoded.winner_mean) == len(encoded.loser_std) == 2 * n and len(encoded.text) == n
    winner_bytes, _ = next(pairs.iter_image_bytes())
    pixels = resize_and_crop(pairs.decode_bytes(winner_bytes, 0, "safe"), TOY_RESOLUTION)[0][None]
    with torch.no_grad():
        upright = pipe.vae.encode(pixels).latent_dist.mean
        mirrored = pipe.vae.encode(pixels.flip(-1)).latent_dist.mean
    torch.testing.assert_close(encoded.winner_mean[[0]], upright, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoded.winner_mean[[n]], mirrored, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mirrored, upright.flip(-1), atol=1e-3), (
        "a flipped latent is not the flipped image's"
    )

    read = {"flip": [], "no_flip": []}
    original = CachedRows.__getitem__
    for name, flip in (("flip", True), ("no_flip", False)):

        def spy(self, index, name=name):
            if self.path.name == "winner_mean.npy":
                read[name].extend(np.asarray(index).reshape(-1).tolist())
            return original(self, index)

        monkeypatch.setattr(CachedRows, "__getitem__", spy)
        train_expert(
            _config(tmp_path, toy_data, max_train_steps=3, random_flip=flip, output_dir=str(tmp_path / name))
        )
    assert any(i >= n for i in read["flip"]) and any(i < n for i in read["flip"])
    assert read["no_flip"] and all(i < n for i in read["no_flip"])


def test_two_runs_that_miss_the_same_cache_key_both_train(tmp_path, toy_data, tiny_models):
    """Seeds trained side by side on one cache: the run that finishes its encode second keeps the first's
    files (it used to write into the first's ``.partial`` folder and crash)."""
    from dpo.encode import cached_encode, load_encoded

    pairs = load_preference_pairs(str(toy_data))
    cache, cpu = tmp_path / "cache", torch.device("cpu")

    def load_pipe():
        return DiffusionPipeline.from_pretrained(str(tiny_models["sd15"]))

    def load_pipe_while_another_run_finishes():
        other = cached_encode(load_pipe, pairs, UNET, "tiny", TOY_RESOLUTION, cache, cpu, progress=False)
        assert other[2] is False  # that run missed too, and wrote the key first
        return load_pipe()

    encoded, folder, hit = cached_encode(
        load_pipe_while_another_run_finishes, pairs, UNET, "tiny", TOY_RESOLUTION, cache, cpu, progress=False
    )
    assert not hit and (folder / "meta.json").exists()
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no partial folder left behind
    rows = list(range(len(pairs)))
    torch.testing.assert_close(encoded.winner_mean[rows], load_encoded(folder, False).winner_mean[rows])


def test_a_toy_base_with_a_wider_text_space_loads_and_samples(tmp_path, tiny_models):
    """``benchmarks/toy_drift.py``'s tried fix: the widened base is a standard pipeline folder whose UNet
    reads the wider text states (a UNet left at the old width would fail in its first cross-attention)."""
    from dpo.toy import pretrain_toy_base, sample_latents

    base = pretrain_toy_base(tiny_models["sd15"], tmp_path / "wide", toy_concepts(1), steps=1, text_width=48)
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim == 48
    assert sample_latents(pipe, ["a lantern scene"], samples=2, steps=2).shape == (2, 64)


def _step_inputs(tmp_path, toy_data, tiny_models, **overrides):
    """A LoRA UNet, its family, the toy pairs' cache and a config: what ``dpo_step`` needs, without a training run."""
    from diffusers import DDPMScheduler

    from dpo.encode import cached_encode

    pairs = load_preference_pairs(str(toy_data))
    cpu = torch.device("cpu")
    pipe = DiffusionPipeline.from_pretrained(str(tiny_models["sd15"]))
    family = UNET.configure(pipe.vae.config, DPOConfig())
    config = _config(tmp_path, toy_data, **overrides).for_family(family)
    encoded, _, _ = cached_encode(
        lambda: pipe, pairs, family, "tiny", TOY_RESOLUTION, tmp_path / "cache", cpu, False
    )
    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=config.target_modules)
    )
    return config, family, pipe, unet, DDPMScheduler.from_config(pipe.scheduler.config), encoded


@pytest.mark.parametrize("mode", ["unet", "text"])
def test_output_preserving_term_adds_to_the_dpo_loss_and_leaves_its_draws_alone(
    tmp_path, toy_data, tiny_models, mode
):
    from dpo.retain import cached_retain_set
    from dpo.trainer import dpo_step

    cross = ["attn2.to_k", "attn2.to_v"]
    config, family, pipe, unet, scheduler, encoded = _step_inputs(
        tmp_path, toy_data, tiny_models, retain_weight=7.0, retain_mode=mode, target_modules=cross
    )
    retain = cached_retain_set(lambda: pipe, family, ["a red kite", "a quiet street", "soup"], "tiny", TOY_RESOLUTION,
                               2 if mode == "unet" else 0, 2, 1.0, tmp_path / "cache", torch.device("cpu"), False)  # fmt: skip
    assert retain.text.shape[0] == 3 and (retain.latents is None) == (mode == "text")
    if mode == "unet":
        assert retain.latents.shape == (6, 4, 4, 4) and retain.caption(torch.tensor([0, 1, 5])).tolist() == [
            0,
            0,
            2,
        ]

    def step(with_retain: bool):
        generator = torch.Generator().manual_seed(3)
        return dpo_step(unet, family, scheduler, encoded, [0, 1], generator, config, torch.device("cpu"),
                        retain=retain if with_retain else None)  # fmt: skip

    fresh = step(True)
    assert fresh.metrics["retain"] == 0.0, "a fresh LoRA (B = 0) changes nothing on the retain captions"
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    plain, preserved = step(False), step(True)
    # the DPO part takes the same draws with the term on: its metrics are the plain step's exactly
    assert {k: v for k, v in preserved.metrics.items() if k != "retain"} == plain.metrics
    assert preserved.metrics["retain"] > 0
    assert preserved.loss.item() == pytest.approx(
        plain.loss.item() + 7.0 * preserved.metrics["retain"], rel=1e-6
    )
    if mode == "text":  # the closed form by hand: |scale * B A h|^2 over tokens, mean over the k/v LoRAs
        from dpo.retain import cross_attention_leak

        states = retain.text[:2]
        expected = []
        for name, layer in unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")) and hasattr(layer, "lora_A"):
                down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                expected.append((states @ down.T @ up.T * layer.scaling["default"]).pow(2).sum(-1).mean())
        assert len(expected) == 8  # the tiny UNet's four transformer blocks, keys and values
        torch.testing.assert_close(cross_attention_leak(unet, states), torch.stack(expected).mean())


def test_output_preserving_term_resumes_exactly_and_the_card_says_it(tmp_path, toy_data):
    settings = {"retain_weight": 50.0, "retain_samples": 1, "retain_sample_steps": 2, "retain_guidance": 1.0,
                "checkpointing_steps": 2}  # fmt: skip
    straight = train_expert(_config(tmp_path, toy_data, output_dir=str(tmp_path / "straight"), **settings))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight.output_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-4")  # as if killed between steps 2 and 4
    (resumed_dir / "pytorch_lora_weights.safetensors").unlink()
    resumed = train_expert(_config(tmp_path, toy_data, output_dir=str(resumed_dir), **settings))
    assert _lora_file(resumed.output_dir)[0] == _lora_file(straight.output_dir)[0]
    lines = [json.loads(line) for line in (straight.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(line["retain"] > 0 for line in lines[1:]), "the term is logged every step"
    card = (straight.output_dir / "README.md").read_text()
    assert "| retain_weight | 50 |" in card and "| retain_prompts | neutral |" in card
    caches = sorted(p.name for p in Path(straight.output_dir).parent.parent.glob("dpo-cache/retain-*"))
    assert len(caches) == 1 and not any("partial" in name for name in caches)


def test_output_preserving_term_trains_an_sdxl_expert(tmp_path, toy_data):
    config = _config(tmp_path, toy_data, base="tiny:sdxl", max_train_steps=2, retain_weight=10.0, retain_samples=1,
                     retain_sample_steps=2, retain_guidance=1.0)  # fmt: skip
    result = train_expert(config)
    assert result.metrics["train_retain"] >= 0
    DiffusionPipeline.from_pretrained(config.cache_dir + "/tiny-models/sdxl").load_lora_weights(
        result.output_dir
    )


def test_output_preserving_term_bad_inputs_name_the_flag(tmp_path, toy_data):
    from coprov2.errors import UserError

    with pytest.raises(
        UserError, match=r"--retain_prompts nope.csv: not one of neutral, other nor a .txt file"
    ):
        train_expert(_config(tmp_path, toy_data, retain_weight=1.0, retain_prompts="nope.csv"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(UserError, match=r"empty.txt: the file holds no caption"):
        train_expert(_config(tmp_path, toy_data, retain_weight=1.0, retain_prompts=str(empty)))
    with pytest.raises(UserError, match=r"--retain_prompts other: .* has no category besides 'all'"):
        train_expert(_config(tmp_path, toy_data, category="all", retain_weight=1.0, retain_prompts="other"))
    with pytest.raises(UserError, match=r"--retain_mode text reads the cross-attention key/value LoRAs only"):
        train_expert(_config(tmp_path, toy_data, retain_weight=1.0, retain_mode="text"))
    with pytest.raises(ValueError, match=r"--retain_share must be > 0"):
        _config(tmp_path, toy_data, retain_share=0)
    assert not (tmp_path / "expert").exists(), "nothing written"


def test_other_categories_are_the_retain_set(toy_data):
    from dpo.retain import retain_prompts

    pairs = load_preference_pairs(str(toy_data))
    prompts = retain_prompts("other", pairs, "concept-0")
    assert prompts and all("harbor" in p for p in prompts) and len(set(prompts)) == len(prompts)
