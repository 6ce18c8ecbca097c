"""The concept router (``merge.router``): it routes each toy concept's unseen captions to that concept alone and the
toy's neutral captions to none (over seeds); it round-trips through ``from_pretrained``; the routed pipeline renders
each prompt exactly as the base with only its experts would; bad inputs are one line, exit 2, nothing written."""

import json

import datasets
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from dpo.toy import NEUTRAL_CAPTIONS, SHIPPED_TOY_BASE, toy_concepts, train_toy_expert, write_toy_dataset
from merge.router import ConceptRouter, RoutedPipeline, RouterConfig, train_router
from merge.router.__main__ import main

CONCEPTS = toy_concepts(3)
SEEDS = (0, 1, 2)


def _pipe(base=SHIPPED_TOY_BASE) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three toy concepts' dataset, a router per seed on the committed toy base, and two quick experts."""
    root = tmp_path_factory.mktemp("router")
    data = write_toy_dataset(root / "data", CONCEPTS, pairs_per_caption=1)
    routers = {}
    for seed in SEEDS:
        routers[seed] = root / f"router-{seed}"
        train_router(RouterConfig(dataset=str(data), base=str(SHIPPED_TOY_BASE), output_dir=str(routers[seed]),
                                  cache_dir=str(root / "cache"), seed=seed, progress=False))  # fmt: skip
    experts = {
        c.name: train_toy_expert(
            root, c, SHIPPED_TOY_BASE, data, c.name, steps=10, retain_weight=0.0
        ).output_dir
        for c in CONCEPTS
    }
    return {"root": root, "data": data, "routers": routers, "experts": experts}


def test_each_unseen_caption_goes_to_its_concept_alone_and_neutral_captions_to_none(world):
    pipe = _pipe()
    prompts = [c.held_out[1] for c in CONCEPTS] + NEUTRAL_CAPTIONS  # captions the router never saw
    for seed, folder in world["routers"].items():
        router = ConceptRouter.from_pretrained(str(folder))
        routes = router.route(pipe, prompts)
        assert [r.categories for r in routes] == [(c.name,) for c in CONCEPTS] + [()] * 3, seed
        summary = json.loads((folder / "router_summary.json").read_text())
        assert all(
            m["recall"] == 1.0 and m["precision"] == 1.0 for m in summary["test"]["categories"].values()
        )
        assert (
            summary["test"]["neutral_false_positive_rate"] == 0.0 and summary["test"]["neutral_prompts"] == 10
        )


def test_the_router_round_trips_and_its_card_says_what_it_was_trained_on(world):
    folder = world["routers"][0]
    router = ConceptRouter.from_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    assert config["categories"] == [c.name for c in CONCEPTS] and config["head"] == "prototype"
    assert config["base"] == SHIPPED_TOY_BASE.name  # a local path is named, not published
    again = ConceptRouter.from_pretrained(str(folder))
    features = torch.randn(4, router.feature_dim)
    assert torch.equal(router(features), again(features))
    summary = json.loads((folder / "router_summary.json").read_text())
    assert torch.allclose(router.thresholds, torch.tensor(list(summary["thresholds"].values())), atol=1e-6)
    card = (folder / "README.md").read_text()
    assert "| concept-1 |" in card and "false-positive rate: 0.000" in card and "prototype head" in card
    assert str(world["root"]) not in card


def test_the_routed_pipeline_renders_each_prompt_as_the_base_with_only_its_experts(world):
    routed = RoutedPipeline(
        _pipe(), ConceptRouter.from_pretrained(str(world["routers"][0])), world["experts"]
    )
    prompts = [CONCEPTS[1].held_out[0], NEUTRAL_CAPTIONS[0], CONCEPTS[0].held_out[0]]

    def generators():
        return [torch.Generator().manual_seed(10 + i) for i in range(len(prompts))]

    kwargs = {"num_inference_steps": 3, "height": 8, "width": 8, "output_type": "np"}
    output = routed(prompts, generator=generators(), **kwargs)
    assert [r.categories for r in output.routes] == [("concept-1",), (), ("concept-0",)]
    for index, expert in enumerate([world["experts"]["concept-1"], None, world["experts"]["concept-0"]]):
        alone = _pipe()
        if expert:
            alone.load_lora_weights(expert)
        reference = alone(prompts[index], generator=generators()[index], **kwargs).images[0]
        np.testing.assert_allclose(output.images[index], reference, atol=1e-5)
    base = _pipe()(prompts[0], generator=generators()[0], **kwargs).images[0]
    assert np.abs(output.images[0] - base).max() > 1e-3, "the expert changed the image of its own prompt"
    # two images per prompt: one generator per image, prompt-major, sliced with the prompt's group
    pairs = [torch.Generator().manual_seed(20 + i) for i in range(2 * len(prompts))]
    twice = routed(prompts, generator=pairs, num_images_per_prompt=2, **kwargs).images
    alone = _pipe()(prompts[1], num_images_per_prompt=2, **kwargs,
                    generator=[torch.Generator().manual_seed(22), torch.Generator().manual_seed(23)]).images  # fmt: skip
    assert len(twice) == 6
    np.testing.assert_allclose(np.stack(twice[2:4]), alone, atol=1e-5)


def _error(capsys, after_loading: bool = False) -> str:
    """The one error line; ``after_loading``: the base's text encoder was loaded first (its loading bars come
    before the line)."""
    error = capsys.readouterr().err
    if after_loading:
        error = error.splitlines(keepends=True)[-1]
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error


def test_bad_inputs_are_one_line_exit_2_and_nothing_written(world, tmp_path, capsys):
    one = write_toy_dataset(tmp_path / "one", toy_concepts(1), pairs_per_caption=1)
    empty = tmp_path / "empty" / "data"
    empty.mkdir(parents=True)
    columns = {"unsafe_prompt": [], "safe_prompt": [], "category": []}
    datasets.Dataset.from_dict(columns, features=datasets.Features(
        {k: datasets.Value("string") for k in columns})).to_parquet(empty / "train-00000-of-00001.parquet")  # fmt: skip
    (tmp_path / "none.txt").write_text("\n")
    capsys.readouterr()  # the fixtures' progress bars
    common = ["--base", str(SHIPPED_TOY_BASE), "--cache_dir", str(tmp_path / "cache"), "--no_progress"]
    cases = {
        "one category (concept-0)": ["--dataset", str(one)],
        "the train split has no rows": ["--dataset", str(empty.parent)],
        "--categories concept-9: not a category": ["--dataset", str(world["data"]), "--categories", "concept-9", "concept-0"],
        "--neutral_prompts: 0 distinct prompt(s)": ["--dataset", str(world["data"]), "--neutral_prompts",
                                                    str(tmp_path / "none.txt")],
        "none.txt: cannot open it": ["--dataset", str(tmp_path / "none.txt")],
    }  # fmt: skip
    for message, argv in cases.items():
        out = tmp_path / "out"
        assert main([*argv, *common, "--output_dir", str(out)]) == 2, message
        assert message in _error(capsys), message
        assert not out.exists(), message


def test_a_router_and_experts_that_do_not_match_or_another_base_are_refused_before_any_image(
    world, tmp_path, capsys
):
    from evaluation.__main__ import main as evaluate

    router = str(world["routers"][0])
    experts = [f"{name}={folder}" for name, folder in world["experts"].items()]
    common = ["--prompts", str(world["data"]), "--metrics", "ip", "--ip_detectors", "dpo.toy:ToyColourDetector",
              "--steps", "1", "--cache_dir", str(tmp_path / "cache"), "--no_progress", "--router", router]  # fmt: skip
    cases = {
        "no expert for concept-2": ["--base", str(SHIPPED_TOY_BASE), "--router_experts", *experts[:2]],
        "experts for categories it does not route: concept-7": [
            "--base", str(SHIPPED_TOY_BASE), "--router_experts", *experts, f"concept-7={world['experts']['concept-0']}"],
        "was trained on the text encoder of toy_base": ["--base", "tiny:sd15", "--router_experts", *experts],
    }  # fmt: skip
    for message, argv in cases.items():
        out = tmp_path / "eval"
        assert evaluate([*common, *argv, "--output_dir", str(out)]) == 2, message
        assert message in _error(capsys, after_loading=True), message
        assert not out.exists(), message
    with pytest.raises(Exception, match="was trained on the text encoder"):
        RoutedPipeline(_pipe(), _other_router(world), world["experts"])


def _other_router(world) -> ConceptRouter:
    """The router with its encoder fingerprint of another base (its probes' features shuffled)."""
    router = ConceptRouter.from_pretrained(str(world["routers"][0]))
    router.probes.copy_(
        router.probes[:, torch.randperm(router.feature_dim, generator=torch.Generator().manual_seed(0))]
    )
    return router


def test_a_flux_router_reads_what_the_transformer_reads_and_routes_unseen_captions(world, tmp_path):
    """On the flow known answer's FLUX base (loaded without its transformer for training): the features are T5's
    token states at the pipeline's length, and the routes are right."""
    from dpo.toy import SHIPPED_FLUX_TOY_BASE

    out = tmp_path / "router"
    train_router(RouterConfig(dataset=str(world["data"]), base=str(SHIPPED_FLUX_TOY_BASE), output_dir=str(out),
                              cache_dir=str(world["root"] / "cache"), progress=False))  # fmt: skip
    router = ConceptRouter.from_pretrained(str(out))
    pipe = _pipe(SHIPPED_FLUX_TOY_BASE)
    assert router.family == "flux" and router.family_settings["max_sequence_length"] == 512
    assert router.feature_dim == pipe.text_encoder_2.config.d_model
    routes = router.route(pipe, [c.held_out[1] for c in CONCEPTS] + NEUTRAL_CAPTIONS)
    assert [r.categories for r in routes] == [(c.name,) for c in CONCEPTS] + [()] * 3
    with pytest.raises(Exception, match="reads a flux base's text encoder"):
        router.check_pipeline(_pipe())


def test_a_second_router_on_the_same_prompts_encodes_nothing_and_is_the_same(world, tmp_path, monkeypatch):
    """The features are cached per chunk of prompts (a killed run resumes from them): a rerun never calls the
    encoder, and a router trained again with the same seed has the same bytes."""
    import merge.router.features

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(merge.router.features, "prompt_features", refuse)
    out = tmp_path / "again"
    train_router(RouterConfig(dataset=str(world["data"]), base=str(SHIPPED_TOY_BASE), output_dir=str(out),
                              cache_dir=str(world["root"] / "cache"), seed=0, progress=False))  # fmt: skip
    first = world["routers"][0]
    assert (out / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert not list(out.glob(".saving-*")), "no scratch folder left behind"


def test_every_head_learns_the_toy_routes_and_a_shuffled_label_does_not(world, tmp_path, monkeypatch):
    """Each head (prototype, contrastive, linear, MLP) routes the unseen captions right; the mutation, the train
    split's categories shuffled among its prompts, must break it."""
    import merge.router.train
    from merge.router.config import HEADS

    pipe = _pipe()
    prompts = [c.held_out[1] for c in CONCEPTS]

    def routes(head: str, name: str = "") -> list[tuple[str, ...]]:
        out = tmp_path / (name or head)
        train_router(RouterConfig(dataset=str(world["data"]), base=str(SHIPPED_TOY_BASE), output_dir=str(out),
                                  head=head, cache_dir=str(world["root"] / "cache"), progress=False))  # fmt: skip
        return [r.categories for r in ConceptRouter.from_pretrained(str(out)).route(pipe, prompts)]

    for head in HEADS:
        assert routes(head) == [(c.name,) for c in CONCEPTS], head
    read = merge.router.train.read_rows

    def shuffled(*args):
        rows = read(*args)
        if rows and args[2] == "train":
            names = [r["category"] for r in rows]
            rows = [{**r, "category": names[(i + len(names) // 3) % len(names)]} for i, r in enumerate(rows)]
        return rows

    monkeypatch.setattr(merge.router.train, "read_rows", shuffled)
    assert routes("contrastive", "shuffled") != [(c.name,) for c in CONCEPTS]


def test_two_bases_in_folders_of_one_name_do_not_share_cached_features(world, tmp_path):
    """The feature cache is keyed by the base as loaded: a router trained on ``b/base`` after one on ``a/base`` (another
    text encoder, the same folder name, one cache) reads ``b/base``'s own features, so it accepts ``b/base``."""
    import shutil

    from coprov2.tiny import resolve_tiny_model

    first, second = tmp_path / "a" / "base", tmp_path / "b" / "base"
    shutil.copytree(resolve_tiny_model("tiny:sd15", tmp_path / "tiny"), first)
    shutil.copytree(SHIPPED_TOY_BASE, second)
    for base in (first, second):
        train_router(RouterConfig(dataset=str(world["data"]), base=str(base), output_dir=str(base.parent / "router"),
                                  cache_dir=str(tmp_path / "cache"), progress=False))  # fmt: skip
    ConceptRouter.from_pretrained(str(second.parent / "router")).check_pipeline(_pipe(second))
