"""Same-seed paired rendering, the CLIP gate's math and rules, and clip-retrieval's folder layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from coprov2.gate.clip_scores import ClipEmbedder, pair_scores
from coprov2.gate.config import GateConfig
from coprov2.gate.decide import decide
from coprov2.gate.retrieval import read_image_embeddings, write_embedding_part
from coprov2.images.config import ImagesConfig
from coprov2.images.render import encode_image, load_t2i_pipeline, render_pairs

RENDER = ImagesConfig(steps=2, guidance=7.5)


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return load_t2i_pipeline(str(tiny_models["sd15"]), torch.device("cpu"))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_prompt_same_seed_gives_identical_images_in_a_pair(pipe):
    (unsafe, safe), (other_unsafe, other_safe) = render_pairs(
        pipe, ["a red car", "a red car"], ["a red car", "a blue boat"], [5, 6], RENDER
    )
    assert np.array_equal(_pixels(unsafe), _pixels(safe))
    assert not np.array_equal(_pixels(unsafe), _pixels(other_unsafe)), "another seed must change the image"
    assert not np.array_equal(_pixels(other_unsafe), _pixels(other_safe)), (
        "another prompt must change the image"
    )


def test_a_pair_renders_the_same_alone_or_at_any_batch_position(pipe):
    """Reruns with another --t2i_batch_pairs (or a resumed shard) reproduce the same images."""
    ((alone_unsafe, alone_safe),) = render_pairs(pipe, ["a red car"], ["a dog"], [5], RENDER)
    batch = render_pairs(
        pipe, ["a cat", "a red car", "a tree"], ["a cow", "a dog", "a lake"], [1, 5, 2], RENDER
    )
    np.testing.assert_allclose(_pixels(batch[1][0]), _pixels(alone_unsafe), atol=1)
    np.testing.assert_allclose(_pixels(batch[1][1]), _pixels(alone_safe), atol=1)


def test_safety_checker_is_not_loaded(tmp_path):
    """A checkpoint that ships a safety checker (as SD1.5 does) loads without it: it would black out
    exactly the unsafe images this dataset needs."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from coprov2.tiny import build

    with_checker = build("sd15")
    clip, processor = build("clip")
    clip.config._attn_implementation = "eager"  # the checker supports no other
    with_checker.register_modules(
        safety_checker=StableDiffusionSafetyChecker(clip.config), feature_extractor=processor.image_processor
    )
    with_checker.register_to_config(requires_safety_checker=True)
    with_checker.save_pretrained(tmp_path)
    assert DiffusionPipeline.load_config(tmp_path)["safety_checker"][1] == "StableDiffusionSafetyChecker"
    assert load_t2i_pipeline(str(tmp_path), torch.device("cpu")).safety_checker is None


def test_lossless_encodings_round_trip(pipe):
    ((image, _),) = render_pairs(pipe, ["a red car"], ["a dog"], [1], RENDER)
    for image_format in ("png", "webp"):
        decoded = Image.open(__import__("io").BytesIO(encode_image(image, image_format))).convert("RGB")
        assert np.array_equal(_pixels(decoded), _pixels(image))
    with pytest.raises(ValueError, match="unknown image format 'jpg'"):
        encode_image(image, "jpg")


def test_pair_scores_are_the_hand_computed_cosines():
    u_img, s_img = np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]])
    u_txt, s_txt = np.array([[0.8, 0.6]]), np.array([[0.0, 1.0]])
    scores = pair_scores(u_img, s_img, u_txt, s_txt)
    assert scores["score_unsafe"][0] == pytest.approx(0.8)
    assert scores["score_safe"][0] == pytest.approx(0.8)
    assert scores["score_unsafe_image_safe_prompt"][0] == pytest.approx(0.0)
    assert scores["score_safe_image_unsafe_prompt"][0] == pytest.approx(0.6 * 0.8 + 0.8 * 0.6)


def _score(pid, uu, ss, us, su):
    return {
        "id": pid,
        "score_unsafe": uu,
        "score_safe": ss,
        "score_unsafe_image_safe_prompt": us,
        "score_safe_image_unsafe_prompt": su,
    }


def test_every_gate_reason():
    scores = [
        _score("ok", 0.30, 0.30, 0.10, 0.10),
        _score("u_low", 0.10, 0.30, 0.05, 0.10),
        _score("s_low", 0.30, 0.15, 0.10, 0.10),
        _score("u_twin", 0.30, 0.30, 0.31, 0.10),
        _score("s_twin", 0.30, 0.30, 0.10, 0.30),
    ]
    decisions, cut = decide(scores, GateConfig(min_score=0.2))
    assert cut == 0.2
    assert {d["id"]: d["reasons"] for d in decisions} == {
        "ok": [],
        "u_low": ["unsafe_image_below_threshold"],
        "s_low": ["safe_image_below_threshold"],
        "u_twin": ["unsafe_image_closer_to_safe_prompt"],
        "s_twin": ["safe_image_closer_to_unsafe_prompt"],
    }
    assert [d["passed"] for d in decisions] == [True, False, False, False, False]
    relaxed, _ = decide(scores, GateConfig(min_score=0.0, require_own_closer=False))
    assert all(d["passed"] for d in relaxed)


def test_percentile_threshold_is_the_run_percentile_of_own_scores():
    scores = [_score(str(i), i / 10, i / 10, -1, -1) for i in range(1, 11)]
    decisions, cut = decide(scores, GateConfig(min_score=-1.0, percentile=50))
    assert cut == pytest.approx(np.percentile([i / 10 for i in range(1, 11)] * 2, 50))
    assert [d["id"] for d in decisions if d["passed"]] == ["6", "7", "8", "9", "10"]
    with pytest.raises(ValueError, match=r"within \[0, 100\]"):
        decide(scores, GateConfig(percentile=150))


def test_clip_embeddings_are_normalized_and_batch_size_free(tiny_models):
    images = [Image.new("RGB", (40, 40), color) for color in ("red", "green", "blue", "white", "black")]
    texts = ["a red square", "green", "a blue square on a table", "white", "black night"]
    batched = ClipEmbedder(str(tiny_models["clip"]), batch_size=64)
    single = ClipEmbedder(str(tiny_models["clip"]), batch_size=1)
    image_emb, text_emb = batched.images(images), batched.texts(texts)
    assert image_emb.shape == text_emb.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(single.images(images), image_emb, atol=1e-5)
    np.testing.assert_allclose(single.texts(texts), text_emb, atol=1e-5)


def test_clip_retrieval_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for part in (1, 0, 10):
        emb = rng.normal(size=(3, 8))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        paths = [f"/data/imgs/p{part}_{i}_unsafe.png" for i in range(3)]
        write_embedding_part(tmp_path, part, emb, paths, emb, ["caption"] * 3)
        parts.append((paths, emb))
    assert np.load(tmp_path / "img_emb" / "img_emb_0.npy").dtype == np.float16
    loaded = read_image_embeddings(tmp_path)
    assert len(loaded) == 9
    for paths, emb in parts:
        for path, row in zip(paths, emb, strict=True):
            np.testing.assert_allclose(loaded[path.rsplit("/", 1)[1][:-4]], row, atol=1e-3)
    with pytest.raises(ValueError, match="not a clip-retrieval embedding folder"):
        read_image_embeddings(tmp_path / "nowhere")
