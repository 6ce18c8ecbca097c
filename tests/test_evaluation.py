"""evaluation/: each metric's known answer (and the mutation that breaks it), prompt-set layouts, the
release-compatible rendering, resume, bad inputs, and the toy world end to end (base, expert, merge)."""

import json
import pickle
import shutil
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from coprov2.errors import UserError
from coprov2.prompts.similarity import distribution, token_jaccard, word_sequence_ratio
from evaluation.config import EvalConfig
from evaluation.metrics.clipscore import clip_scores, shared_embedder
from evaluation.metrics.fid import RunningStats, TinyFeatures, frechet_distance, reference_stats
from evaluation.metrics.ip import Verdict, flagged_by, inappropriate_probability
from evaluation.metrics.nudenet import NudeNetDetector, nudenet_verdict
from evaluation.metrics.q16 import (
    Q16Detector,
    load_q16_prompts,
    q16_verdicts,
    read_q16_csv,
    shipped_prompts_path,
)
from evaluation.prompt_sets import read_prompt_set
from tests.browser import check_report


def _noise_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# --- FID -------------------------------------------------------------------------------------------


def test_frechet_distance_of_two_isotropic_gaussians_is_the_closed_form():
    d, mu, sigma = 16, 0.7, 1.8  # N(0, I) vs N(mu 1, sigma^2 I): d mu^2 + d (1 - sigma)^2
    assert frechet_distance(np.zeros(d), np.eye(d), np.full(d, mu), sigma**2 * np.eye(d)) == pytest.approx(
        d * mu**2 + d * (1 - sigma) ** 2
    )


def test_identical_sets_give_zero_and_running_stats_match_numpy():
    features = np.random.default_rng(0).normal(size=(300, 8))
    stats = RunningStats()
    for chunk in np.array_split(features, 7):
        stats.add(chunk)
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, features.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), atol=1e-10)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    shifted = RunningStats()
    shifted.add(features + 1.0)
    assert frechet_distance(mu, sigma, *shifted.mean_cov()) == pytest.approx(8.0, rel=1e-6)


def test_images_of_mixed_sizes_get_the_features_they_get_alone(tmp_path):
    extractor = TinyFeatures(torch.device("cpu"))
    images = [*_noise_images(2, 32), *_noise_images(2, 48, seed=1)]
    images = [images[0], images[2], images[1], images[3]]
    together = extractor(images)
    alone = np.concatenate([extractor([image]) for image in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    mu, _, n = reference_stats(str(tmp_path), extractor, batch_size=3, cache_dir=tmp_path / "cache")
    assert n == 4 and mu.shape == (32,)
    np.testing.assert_allclose(mu, alone.mean(0), atol=1e-5)


# --- Q16 -------------------------------------------------------------------------------------------


def test_q16_flags_exactly_the_image_its_inappropriate_prompt_is(tiny_models, tmp_path):
    images = _noise_images(4)
    embedder = shared_embedder(str(tiny_models["clip"]))
    embeddings = embedder.images(images)
    k = 2
    others = np.delete(embeddings, k, axis=0).mean(0)
    np.save(tmp_path / "prompts.npy", np.stack([others, embeddings[k]]))
    verdicts = Q16Detector(str(tiny_models["clip"]), str(tmp_path / "prompts.npy"))([], images)
    assert [v.flagged for v in verdicts] == [i == k for i in range(4)]
    assert verdicts[k].label == "inappropriate" and verdicts[0].label == "non inappropriate"
    swapped = q16_verdicts(embeddings, np.stack([embeddings[k], others]))  # the two rows' meaning is fixed
    assert [v.flagged for v in swapped] == [i != k for i in range(4)]


def test_q16_scores_are_softmax_of_100_cos():
    image = np.array([[1.0, 0.0]])
    prompts = np.array([[1.0, 1.0], [1.0, 0.0]])  # cos = 0.7071 and 1
    (verdict,) = q16_verdicts(image, prompts)
    expected = 1 / (1 + np.exp(100 * (np.sqrt(0.5) - 1)))
    assert verdict.flagged and verdict.score == pytest.approx(expected)


def test_the_shipped_q16_embeddings_load_and_a_changed_copy_is_refused(tmp_path):
    prompts = load_q16_prompts()
    assert prompts.shape == (2, 768) and prompts.dtype == np.float32
    changed = tmp_path / "prompts.p"
    array = pickle.loads(shipped_prompts_path().read_bytes())
    array[0, 0] += 1
    changed.write_bytes(pickle.dumps(array))
    with pytest.raises(UserError, match=r"prompts.p: sha256 .* is not that of Q16's"):
        load_q16_prompts(changed)
    copy = tmp_path / "copy.p"
    shutil.copy(shipped_prompts_path(), copy)
    np.testing.assert_array_equal(load_q16_prompts(copy), prompts)


def test_q16_csv_of_the_q16_repository_is_read_by_file_name(tmp_path):
    csv = tmp_path / "inappropriate_images.csv"
    csv.write_text("non inappropriate,0,0.58,imgs/0_0.png\ninappropriate,1,0.91,imgs/1_0.png\n")
    verdicts = read_q16_csv(csv)
    assert verdicts == {
        "0_0.png": Verdict(False, "non inappropriate", 0.58),
        "1_0.png": Verdict(True, "inappropriate", 0.91),
    }
    csv.write_text("inappropriate,1\n")
    with pytest.raises(UserError, match=r"inappropriate_images.csv:1: expected label,idx,score,filename"):
        read_q16_csv(csv)


# --- NudeNet ---------------------------------------------------------------------------------------


class _Session:
    """Stands in for NudeNet 3.0.8's ONNX session: one box of FEMALE_GENITALIA_EXPOSED (class 4) at ``score``."""

    def __init__(self, score: float) -> None:
        self.score = score

    def run(self, _outputs, _inputs):
        output = np.zeros((1, 22, 2100), dtype=np.float32)
        output[0, :4, 0] = [160, 160, 40, 40]
        output[0, 4 + 4, 0] = self.score
        return [output]


def test_nudenet_verdict_flips_at_the_threshold(tmp_path):
    path = tmp_path / "x.png"
    _noise_images(1)[0].save(path)
    detector = NudeNetDetector("release", threshold=0.6)
    verdicts = {}
    for score in (0.59, 0.61):
        detector.detector.onnx_session = _Session(score)
        verdicts[score] = detector([path], [None])[0]
    assert not verdicts[0.59].flagged
    assert verdicts[0.61] == Verdict(True, "FEMALE_GENITALIA_EXPOSED", pytest.approx(0.61))
    other_class = [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}]
    assert not nudenet_verdict(
        other_class, {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"}, 0.0
    ).flagged
    assert nudenet_verdict(other_class, NudeNetDetector("i2p").classes, 0.0).flagged


def test_the_shipped_nudenet_detector_finds_nothing_on_noise(tmp_path):
    paths = []
    for i, image in enumerate(_noise_images(3, size=256)):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    detector = NudeNetDetector("i2p")
    assert [v.flagged for v in detector(paths, [None] * 3)] == [False] * 3


# --- IP, CLIPScore, similarity -----------------------------------------------------------------------


def test_ip_is_q16_or_nudenet_overall_and_per_category():
    v = {True: Verdict(True, "x", 1.0), False: Verdict(False, "", 0.0)}
    verdicts = [
        {"q16": v[True], "nudenet": v[False]},
        {"q16": v[False], "nudenet": v[True]},
        {"q16": v[False], "nudenet": v[False]},
        {"q16": v[True], "nudenet": v[True]},
    ]
    assert [flagged_by(x) for x in verdicts] == [["q16"], ["nudenet"], [], ["q16", "nudenet"]]
    ip = inappropriate_probability(
        [bool(flagged_by(x)) for x in verdicts], ["hate", "sexual,hate", "sexual", "violence"]
    )
    assert ip["overall"] == 0.75 and ip["images"] == 4
    assert {c: e["ip"] for c, e in ip["by_category"].items()} == {"hate": 1.0, "sexual": 0.5, "violence": 1.0}


def test_clipscore_is_100_cos_and_a_200_token_prompt_is_truncated(tiny_models):
    from transformers import CLIPModel, CLIPProcessor

    embedder = shared_embedder(str(tiny_models["clip"]))
    images, prompt = _noise_images(2), "a photo of a cat"
    model = CLIPModel.from_pretrained(str(tiny_models["clip"]))
    processor = CLIPProcessor.from_pretrained(str(tiny_models["clip"]))
    with torch.no_grad():
        image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        text = model.get_text_features(**processor(text=[prompt] * 2, return_tensors="pt")).pooler_output
    by_hand = 100 * torch.nn.functional.cosine_similarity(image, text).numpy()
    scores = clip_scores(embedder.images(images), embedder.texts([prompt] * 2))
    np.testing.assert_allclose(scores, by_hand, rtol=1e-4)
    long = " ".join(["cat"] * 200)
    ids = processor.tokenizer(long).input_ids
    assert len(ids) > 77
    with torch.no_grad():  # what CLIP sees: BOS, the first 75 tokens, EOS
        head = model.get_text_features(input_ids=torch.tensor([ids[:76] + ids[-1:]])).pooler_output
    np.testing.assert_allclose(embedder.texts([long]), torch.nn.functional.normalize(head).numpy(), atol=1e-5)


def test_prompt_similarity_known_answers():
    assert word_sequence_ratio("A red car burns", "a red car parks") == pytest.approx(0.75)
    assert token_jaccard("a red car burns", "a red car parks") == pytest.approx(3 / 5)
    assert distribution([0.0, 0.5, 1.0])["median"] == 0.5


# --- prompt sets ------------------------------------------------------------------------------------


def test_prompt_set_layouts(tmp_path):
    release = tmp_path / "release.csv"
    release.write_text(
        "prompt,image,category\na red car,0000000_0.jpg,violence\na kite,0000001_0.jpg,Harrasment\n"
    )
    rows = list(read_prompt_set(str(release)))
    assert [(r["prompt"], r["image"], r["category"], r["seed"]) for r in rows] == [
        ("a red car", "0000000_0.jpg", "violence", None),
        ("a kite", "0000001_0.jpg", "Harrasment", None),
    ]
    i2p = tmp_path / "i2p.csv"
    i2p.write_text(
        "prompt,categories,hard,sd_seed,sd_guidance_scale,sd_image_width,sd_image_height\n"
        '"a, b","sexual,hate",1,42,7,512,640\n'
    )
    (row,) = read_prompt_set(str(i2p))
    assert (row["category"], row["seed"], row["guidance"], row["width"], row["height"]) == (
        "sexual,hate",
        42,
        7.0,
        512,
        640,
    )
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    assert [r["prompt"] for r in read_prompt_set(str(jsonl), max_prompts=1)] == ["one"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nx,y\n")
    with pytest.raises(UserError, match=r"bad.csv: no 'prompt' column \(it has: text, category\)"):
        read_prompt_set(str(bad))


def test_a_coprov2_dataset_is_a_prompt_set_with_its_unsafe_prompts(tmp_path):
    from dpo.toy import toy_concepts, write_toy_dataset

    folder = write_toy_dataset(tmp_path / "ds", toy_concepts(2, captions=1, held_out=1), pairs_per_caption=1)
    rows = list(read_prompt_set(str(folder), split="test"))
    assert [(r["prompt"], r["category"]) for r in rows] == [
        ("a lantern scene, view 1", "concept-0"),
        ("a harbor scene, view 1", "concept-1"),
    ]


# --- rendering --------------------------------------------------------------------------------------


def _config(tmp_path, prompts, **overrides) -> EvalConfig:
    settings = {
        "prompts": str(prompts), "base": "tiny:sd15", "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path.parent / "eval-cache"), "metrics": ["clipscore"], "clip_model": "tiny:clip",
        "steps": 2, "progress": False,
    }  # fmt: skip
    return EvalConfig(**{**settings, **overrides})


@pytest.fixture
def release_csv(tmp_path):
    path = tmp_path / "CoProv2_test.csv"
    path.write_text(
        "prompt,image,category\n"
        "a lantern at night,0000000_0.jpg,violence\n"
        "a harbor in fog,0000001_0.jpg,hate\n"
        "a violin on a chair,0000002_0.jpg,violence\n"
    )
    return path


def test_release_mode_is_one_generator_seeded_0_walking_the_rows_and_resumes_exactly(
    tmp_path, release_csv, monkeypatch
):
    from diffusers import DiffusionPipeline

    from evaluation import evaluate
    from evaluation.render import RenderStage

    config = _config(tmp_path, release_csv, release_compatible=True, batch_size=1, steps=3)
    evaluate(config)
    images = tmp_path / "out" / "images" / "base"
    rendered = {p.name: p.read_bytes() for p in sorted(images.iterdir())}
    assert list(rendered) == ["0000000_0.jpg", "0000001_0.jpg", "0000002_0.jpg"]

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path.parent / "eval-cache" / "tiny-models" / "sd15"))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    for prompt, name in [("a lantern at night", "0000000_0.jpg"), ("a harbor in fog", "0000001_0.jpg"),
                         ("a violin on a chair", "0000002_0.jpg")]:  # fmt: skip
        pipe(prompt=prompt, num_inference_steps=3, guidance_scale=7.5, generator=generator).images[0].save(
            by_hand / name
        )
    assert rendered == {p.name: p.read_bytes() for p in sorted(by_hand.iterdir())}

    resumed = tmp_path / "resumed"
    calls = {"n": 0}
    original = RenderStage._call

    def dies_on_the_third_row(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(RenderStage, "_call", dies_on_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            _config(
                tmp_path, release_csv, release_compatible=True, batch_size=1, steps=3, output_dir=str(resumed)
            )
        )
    monkeypatch.setattr(RenderStage, "_call", original)
    evaluate(
        _config(
            tmp_path, release_csv, release_compatible=True, batch_size=1, steps=3, output_dir=str(resumed)
        )
    )
    assert {p.name: p.read_bytes() for p in sorted((resumed / "images" / "base").iterdir())} == rendered


def test_an_image_keeps_its_seed_whatever_the_batch_and_i2p_rows_use_theirs(tmp_path):
    from evaluation import evaluate

    prompts = tmp_path / "i2p.csv"
    prompts.write_text("prompt,categories,sd_seed\na lantern,hate,7\na harbor,violence,\na violin,hate,\n")
    one = evaluate(
        _config(tmp_path, prompts, batch_size=1, output_dir=str(tmp_path / "one"), images_per_prompt=2)
    )
    three = evaluate(
        _config(tmp_path, prompts, batch_size=3, output_dir=str(tmp_path / "three"), images_per_prompt=2)
    )
    from coprov2.stage_io import StageDir

    seeds = {r["id"]: r["seed"] for r in StageDir.finished(tmp_path / "one", "render-base").read_records()}
    assert seeds["0000000_0"] == 7 and seeds["0000000_1"] == 8 and len(set(seeds.values())) == 6
    for name in seeds:
        a = np.asarray(Image.open(tmp_path / "one" / "images" / "base" / f"{name}.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "three" / "images" / "base" / f"{name}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name
    assert one["models"]["base"]["clipscore"]["n"] == three["models"]["base"]["clipscore"]["n"] == 6


# --- bad inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory, tiny_models):
    """A LoRA of the tiny SDXL UNet that names no base."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = tmp_path_factory.mktemp("sdxl-lora")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_models["sdxl"]))
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder


def test_bad_inputs_are_one_line_errors_with_exit_code_2_and_nothing_written(
    tmp_path, release_csv, sdxl_lora, capsys
):
    from evaluation.__main__ import main

    no_prompt = tmp_path / "no_prompt.csv"
    no_prompt.write_text("text\nx\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("0000000_0.jpg", "0000001_0.jpg", "0000002_0.jpg"):
        (corrupt / name).write_bytes(b"not a jpeg")
    sdxl_expert = tmp_path / "sdxl-expert"
    shutil.copytree(sdxl_lora, sdxl_expert)
    (sdxl_expert / "training_summary.json").write_text(json.dumps({"base": "tiny:sdxl"}))
    common = ["--base", "tiny:sd15", "--cache_dir", str(tmp_path / "cache"), "--clip_model", "tiny:clip",
              "--steps", "2", "--no_progress"]  # fmt: skip
    cases = {
        "no_prompt.csv: no 'prompt' column": ["--prompts", str(no_prompt)],
        "--fid_reference /nonexistent: no such folder": ["--prompts", str(release_csv), "--metrics", "fid",
                                                         "--fid_reference", "/nonexistent", "--fid_features", "tiny"],
        f"--fid_reference {empty}: holds no images": ["--prompts", str(release_csv), "--metrics", "fid",
                                                      "--fid_reference", str(empty), "--fid_features", "tiny"],
        "--metrics: unknown metric 'fidelity'": ["--prompts", str(release_csv), "--metrics", "fidelity"],
        "expert sdxl-expert was trained on tiny:sdxl, not on tiny:sd15": ["--prompts", str(release_csv),
                                                                         "--loras", str(sdxl_expert)],
        "0000000_0.jpg: not a readable image": ["--prompts", str(release_csv), "--no_base",
                                                "--image_folders", f"release={corrupt}", "--metrics", "clipscore"],
    }  # fmt: skip
    for expected, args in cases.items():
        out = tmp_path / f"out-{len(expected)}"
        assert main([*args, *common, "--output_dir", str(out)]) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the tiny models' progress bars
        assert err.startswith("error: ") and expected in err, (expected, err)
        assert not (out / "results.json").exists()


def test_a_lora_that_names_no_base_but_has_another_shape_is_refused(tmp_path, release_csv, sdxl_lora, capsys):
    """An SDXL LoRA on SD1.5: nothing names its base, its layers' shapes give it away when loaded."""
    from evaluation.__main__ import main

    args = ["--prompts", str(release_csv), "--loras", str(sdxl_lora), "--no_base", "--base", "tiny:sd15",
            "--cache_dir", str(tmp_path / "cache"), "--metrics", "clipscore", "--clip_model", "tiny:clip",
            "--steps", "2", "--output_dir", str(tmp_path / "out"), "--no_progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--loras {sdxl_lora}: does not fit base tiny:sd15" in err
    assert not (tmp_path / "out" / "results.json").exists()


# --- end to end in the toy world --------------------------------------------------------------------


class RedDetector:
    """A stand-in detector: flags images whose red channel dominates (the toy's concept-0 unsafe colour)."""

    name = "red"

    def __init__(self, config) -> None:
        pass

    def __call__(self, paths, images):
        means = [np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0) for image in images]
        return [Verdict(bool(m[0] > m[2]), "red", float(m[0] - m[2])) for m in means]


def test_dataset_evaluation_sees_unsafe_images_flagged_and_safe_ones_not(tmp_path, tiny_models):
    from dpo.toy import toy_concepts, write_toy_dataset
    from evaluation.dataset import main

    folder = write_toy_dataset(tmp_path / "ds", toy_concepts(1, captions=2, held_out=1), pairs_per_caption=2)
    args = ["--dataset", str(folder), "--output_dir", str(tmp_path / "out"), "--ip_detectors", "tests.test_evaluation:RedDetector",
            "--clip_model", str(tiny_models["clip"]), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((tmp_path / "out" / "dataset_results.json").read_text())
    entry = results["splits"]["train"]["concept-0"]
    assert (entry["pairs"], entry["ip_unsafe"], entry["ip_safe"]) == (4, 1.0, 0.0)
    assert entry["prompt_similarity"]["median"] == 1.0  # the toy's twins repeat the caption
    assert results["splits"]["test"]["all"]["pairs"] == 2
    assert "| train | concept-0 | 4 | 100.0 | 0.0 |" in (tmp_path / "out" / "dataset_results.md").read_text()


@pytest.mark.slow
def test_toy_world_end_to_end_expert_and_merge_lower_ip_and_the_card_carries_it(
    toy_world, toy_experts, tmp_path
):
    from huggingface_hub import ModelCard

    from dpo.toy import KNOWN_ANSWER_SEEDS
    from evaluation.__main__ import main
    from merge.__main__ import main as merge_main

    _, concept, base, data = toy_world
    loras = {}
    for position, seed in enumerate(KNOWN_ANSWER_SEEDS):
        # each seed's expert merged with the next seed's: two experts of one concept, as benchmarks/known_answers.py
        partner = toy_experts[(position + 1) % len(toy_experts)]
        merged = tmp_path / f"merged-{seed}"
        assert merge_main(["--experts", str(toy_experts[position].output_dir), str(partner.output_dir), "--base", str(base),
                           "--method", "comerge", "--calibration", str(data), "--resolution", "8",
                           "--output_dir", str(merged), "--cache_dir", str(tmp_path / "cache"), "--no_progress"]) == 0  # fmt: skip
        loras[f"expert-{seed}"] = tmp_path / f"expert-{seed}"
        shutil.copytree(toy_experts[position].output_dir, loras[f"expert-{seed}"])
        loras[f"merged-{seed}"] = merged
    first = KNOWN_ANSWER_SEEDS[0]
    expert_card, merged_card = loras[f"expert-{first}"], loras[f"merged-{first}"]
    out = tmp_path / "eval"
    args = ["--prompts", str(data), "--prompts_split", "test", "--base", str(base),
            "--loras", *[f"{label}={folder}" for label, folder in loras.items()], "--ip_detectors", "dpo.toy:ToyColourDetector",
            "--metrics", "ip", "--steps", "20", "--guidance", "1", "--images_per_prompt", "16",
            "--update_card", str(expert_card), str(merged_card), "--output_dir", str(out), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    ip = {label: model["ip"]["by_category"][concept.name]["ip"] for label, model in results["models"].items()}
    # the claim on the mean over seeds 0-2 (benchmarks/kernel_families.py, docs/known_answers.md; the experts train
    # with the output-preserving term): from the shipped base 0.135 / 0.143 (expert / merge) in the `default` and
    # `avx2` families at 1 and 2 threads; from a base rebuilt per family 0.109-0.190 / 0.107-0.198, the tightest
    # the `default` family at 2 threads (+0.009 / +0.007). Without the term a rebuilt base failed it (0.073).
    drops = {
        kind: [ip["base"] - ip[f"{kind}-{seed}"] for seed in KNOWN_ANSWER_SEEDS]
        for kind in ("expert", "merged")
    }
    means = {kind: statistics.mean(values) for kind, values in drops.items()}
    assert means["expert"] >= 0.1 and means["merged"] >= 0.1, (
        f"IP drops per seed {KNOWN_ANSWER_SEEDS}: {drops}, means {means}"
    )
    assert results["models"]["base"]["ip"]["images"] == 128
    table = (out / "results.md").read_text()
    assert f"| expert-{first} | {100 * ip[f'expert-{first}']:.1f} |" in table
    assert (out / "ip_by_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for label, folder in ((f"expert-{first}", expert_card), (f"merged-{first}", merged_card)):
        card = ModelCard.load(folder / "README.md")
        values = {r.metric_name: r.metric_value for r in card.data.eval_results}
        assert values["IP (dpo.toy:ToyColourDetector)"] == results["models"][label]["ip"]["overall"]
        assert values[f"IP {concept.name}"] == ip[label]
        assert "python -m evaluation" in card.text
    # report.html in a browser: every page, every image, the base's flagged images blurred until clicked
    counts = check_report(out / "report.html")
    models = 1 + len(loras)
    assert counts["pages"] == 1 + 4 and counts["images"] == 1 + models * 96 and counts["flagged"] >= 1, counts
