"""merge/: known answers of every method on synthetic experts, then experts from dpo/ merged end to end."""

import json
from pathlib import Path

import pytest
import torch

from merge.calibrate import GramRecorder, branch_sums
from merge.experts import Expert, LoraLayer, check_compatible
from merge.methods import METHODS, comerge, merge_experts, normalized, regmean


def _expert(name: str, seed: int, rank: int = 2, out: int = 6, inp: int = 5, scale: float = 0.5) -> Expert:
    g = torch.Generator().manual_seed(seed)
    layers = {
        layer: LoraLayer(
            A=torch.randn(rank, inp, generator=g), B=torch.randn(out, rank, generator=g), scale=scale
        )
        for layer in ("down.attn1.to_q", "up.attn2.to_v")
    }
    return Expert(name, layers, "base", ["to_q", "to_v"])


def _delta(merged, layer):
    A, B = merged[layer]
    return B @ A


def _scores(experts, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = {
        layer: torch.rand(len(experts), experts[0].layers[layer].B.shape[0], generator=g)
        for layer in experts[0].layers
    }
    inputs = {
        layer: torch.rand(len(experts), experts[0].layers[layer].A.shape[1], generator=g)
        for layer in experts[0].layers
    }
    return rows, inputs


def test_comerge_rows_are_exactly_the_winners_rows():
    experts = [_expert(f"e{i}", i) for i in range(3)]
    rows, _ = _scores(experts)
    merged = comerge(experts, rows)
    for layer in experts[0].layers:
        winner = rows[layer].argmax(0)
        expected = torch.stack([experts[int(w)].layers[layer].delta()[o] for o, w in enumerate(winner)])
        assert torch.allclose(_delta(merged, layer), expected, atol=1e-5)
        assert merged[layer][0].shape[0] == 3 * 2, "rank E*r"


def test_comerge_svd_picks_per_weight_then_truncates():
    experts = [_expert(f"e{i}", i) for i in range(2)]
    _, inputs = _scores(experts)
    merged = merge_experts(experts, "comerge_svd", input_scores=inputs, rank=5)
    layer = "down.attn1.to_q"
    deltas = torch.stack([e.layers[layer].delta() for e in experts])
    chosen = deltas.gather(0, (deltas.abs() * inputs[layer][:, None, :]).argmax(0, keepdim=True))[0]
    assert torch.allclose(_delta(merged, layer), chosen, atol=1e-4), "rank 5 = full rank of a 6x5 delta"
    low = merge_experts(experts, "comerge_svd", input_scores=inputs, rank=1)
    s = torch.linalg.svdvals(chosen)
    assert torch.linalg.matrix_norm(_delta(low, layer) - chosen) == pytest.approx(
        s[1:].norm().item(), rel=1e-4
    )


def _grams(experts, inputs, preserve=None):
    """The closed-form fusion's statistics fed through the calibration's own recorder: expert ``e`` sees
    ``inputs[e]`` at every layer, the base sees ``preserve``."""
    recorder = GramRecorder(experts)
    for expert, x in [*enumerate(inputs), *([(None, preserve)] if preserve is not None else [])]:
        for layer in experts[0].layers:
            recorder.record(layer, expert, x)
        recorder.finish(expert)
    return recorder.grams


def _all_inputs(experts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _grams(experts, [torch.randn(64, 5, generator=g) for _ in experts])


@pytest.mark.parametrize("method", METHODS)
def test_one_expert_comes_back_unchanged(method):
    expert = _expert("only", 0)
    rows, inputs = _scores([expert])
    merged = merge_experts(
        [expert], method, row_scores=rows, input_scores=inputs, density=1.0, grams=_all_inputs([expert]),
        regmean_epsilon=1e-9,
    )  # fmt: skip
    for layer, lora in expert.layers.items():
        assert torch.allclose(_delta(merged, layer), lora.delta(), atol=1e-4), method


@pytest.mark.parametrize("method", METHODS)
def test_identical_experts_give_the_same_delta(method):
    experts = [_expert("a", 0), _expert("b", 0), _expert("c", 0)]
    rows, inputs = _scores(experts)
    merged = merge_experts(
        experts, method, row_scores=rows, input_scores=inputs, density=1.0, grams=_all_inputs(experts),
        regmean_epsilon=1e-9,
    )  # fmt: skip
    factor = 3.0 if method == "sum" else 1.0  # concatenation adds the three deltas
    for layer, lora in experts[0].layers.items():
        assert torch.allclose(_delta(merged, layer), factor * lora.delta(), atol=1e-4), method


def _retained(merged_delta: torch.Tensor, expert: LoraLayer, x: torch.Tensor) -> float:
    """How much of the expert's own effect on its inputs the merged layer keeps: the projection of the
    merged branch output on the expert's, ``<x M^T, x D^T> / |x D^T|^2`` (1 = all of it, 0 = none)."""
    mine, merged = x @ expert.delta().T, x @ merged_delta.T
    return ((merged * mine).sum() / (mine * mine).sum()).item()


def _one_layer_experts(Bs: list[torch.Tensor], A: torch.Tensor) -> list[Expert]:
    return [
        Expert(f"e{i}", {"mid.attn2.to_v": LoraLayer(A=A, B=B, scale=1.0)}, "base", ["to_v"])
        for i, B in enumerate(Bs)
    ]


def _calibrated_row_scores(experts: list[Expert], x: torch.Tensor, normalize_by_tokens: bool = True):
    """Co-Merge's row scores measured with the calibration's own arithmetic (``branch_sums``) on ``x``."""
    layer = "mid.attn2.to_v"
    sums = torch.stack([branch_sums(e.layers[layer], x)[0] for e in experts])
    return {layer: sums / x.shape[0]}


def test_experts_on_disjoint_output_channels_merge_with_no_loss():
    """Expert 0 writes output channels 0-2 only, expert 1 channels 3-5 only: each wins its own rows,
    so Co-Merge keeps all of both (retained gain 1), where averaging keeps half of each."""
    g = torch.Generator().manual_seed(0)
    A, x = torch.randn(2, 5, generator=g), torch.randn(64, 5, generator=g)
    B0, B1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    B0[3:], B1[:3] = 0, 0
    experts = _one_layer_experts([B0, B1], A)
    merged = _delta(comerge(experts, _calibrated_row_scores(experts, x)), "mid.attn2.to_v")
    linear = _delta(merge_experts(experts, "linear"), "mid.attn2.to_v")
    for expert in experts:
        lora = expert.layers["mid.attn2.to_v"]
        assert _retained(merged, lora, x) == pytest.approx(1.0, abs=1e-5)
        assert _retained(linear, lora, x) == pytest.approx(0.5, abs=1e-5)


def test_experts_fighting_over_channels_each_keep_the_channels_they_need_most():
    """Both experts write every channel along the same input direction, with opposite signs: expert 0
    strongly (+1) on channels 0-2 and weakly (+0.2) on 3-5, expert 1 the mirror image (-0.2, -1).
    Known answers (|a|^2 = 3 * 1 + 3 * 0.04 = 3.12): Co-Merge gives channels 0-2 to expert 0 and 3-5
    to expert 1, so each keeps (3 - 0.6) / 3.12 = 0.769 of its effect (it loses its weak channels);
    averaging cancels to +-0.4 per channel, keeping (1.2 - 0.24) / 3.12 = 0.308; the sum keeps 0.615.
    An expert scaled up 10x wins every channel by scale alone (the quiet one keeps -12 / 3.12 = -3.85,
    the reverse of its effect) unless scores are normalised per expert, which gives back the split of
    channels (the quiet one then keeps (3 - 6) / 3.12: its strong channels, against louder weak ones)."""
    v = torch.tensor([[1.0, 0.5, -0.5, 0.25, 0.0]])
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    a = torch.tensor([[1.0], [1.0], [1.0], [0.2], [0.2], [0.2]])
    experts = _one_layer_experts([a, -a.flip(0)], v)
    loras = [e.layers["mid.attn2.to_v"] for e in experts]
    scores = _calibrated_row_scores(experts, x)
    assert scores["mid.attn2.to_v"].argmax(0).tolist() == [0, 0, 0, 1, 1, 1]
    expected = {"comerge": 2.4 / 3.12, "linear": 0.96 / 3.12, "sum": 1.92 / 3.12}
    for method, value in expected.items():
        delta = _delta(merge_experts(experts, method, row_scores=scores), "mid.attn2.to_v")
        assert [_retained(delta, lora, x) for lora in loras] == pytest.approx([value, value], abs=1e-5), (
            method
        )

    loud = _one_layer_experts([a, -10 * a.flip(0)], v)
    scores = _calibrated_row_scores(loud, x)
    raw = _delta(comerge(loud, scores), "mid.attn2.to_v")
    fair = _delta(comerge(loud, scores, normalize=True), "mid.attn2.to_v")
    quiet = loud[0].layers["mid.attn2.to_v"]
    assert _retained(raw, quiet, x) == pytest.approx(-12 / 3.12, abs=1e-4)
    assert normalized(scores["mid.attn2.to_v"]).argmax(0).tolist() == [0, 0, 0, 1, 1, 1]
    assert _retained(fair, quiet, x) == pytest.approx(-3 / 3.12, abs=1e-5)


def _split_inputs(seed: int, dims: int = 5, first: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two experts' inputs in disjoint subspaces: expert 0's in dimensions ``< first``, expert 1's in the rest."""
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(64, dims, generator=g), torch.randn(64, dims, generator=g)
    x0[:, first:], x1[:, :first] = 0, 0
    return x0, x1


def test_closed_form_keeps_both_experts_whose_inputs_span_disjoint_subspaces():
    """Each expert's effect on its own inputs depends only on its own input dimensions, so one delta can
    hold both exactly: retained 1.0 each (to the ridge's 1e-9), where the average keeps half of each plus
    half of what the other expert's delta happens to do on those inputs (``(1 + cross) / 2``)."""
    x0, x1 = _split_inputs(0)
    experts = [_expert("a", 1), _expert("b", 2)]
    grams = _grams(experts, [x0, x1])
    merged = merge_experts(experts, "regmean", grams=grams, regmean_lambda=0.0, regmean_epsilon=1e-9)
    linear = merge_experts(experts, "linear")
    for layer in experts[0].layers:
        fused, average = _delta(merged, layer), _delta(linear, layer)
        for expert, other, x in zip(experts, experts[::-1], (x0, x1), strict=True):
            cross = _retained(other.layers[layer].delta(), expert.layers[layer], x)
            assert _retained(fused, expert.layers[layer], x) == pytest.approx(1.0, abs=1e-6)
            assert _retained(average, expert.layers[layer], x) == pytest.approx((1 + cross) / 2, abs=1e-6)


def test_closed_form_keeps_the_fighting_experts_that_channel_selection_cannot():
    """The fighting experts of the test above (one input direction, opposite signs on every channel),
    now with inputs in disjoint subspaces: the fusion keeps each whole (retained 1.0), Co-Merge's
    channel selection on the same inputs keeps at most 0.77 of one of them."""
    v = torch.tensor([[1.0, 0.5, -0.5, 0.25, 0.5]])
    a = torch.tensor([[1.0], [1.0], [1.0], [0.2], [0.2], [0.2]])
    experts = _one_layer_experts([a, -a.flip(0)], v)
    x0, x1 = _split_inputs(1)
    layer = "mid.attn2.to_v"
    fused = _delta(
        merge_experts(experts, "regmean", grams=_grams(experts, [x0, x1]), regmean_lambda=0, regmean_epsilon=1e-9),
        layer,
    )  # fmt: skip
    scores = {
        layer: torch.cat(
            [_calibrated_row_scores([e], x)[layer] for e, x in zip(experts, (x0, x1), strict=True)]
        )
    }
    selected = _delta(comerge(experts, scores, normalize=True), layer)
    pairs = list(zip((e.layers[layer] for e in experts), (x0, x1), strict=True))
    assert [_retained(fused, lora, x) for lora, x in pairs] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert min(_retained(selected, lora, x) for lora, x in pairs) < 0.8


def test_closed_form_with_a_large_lambda_leaves_the_preserved_inputs_to_the_base():
    """lambda 1e6: the merged delta's output on the preserve inputs is 1e-4 of the experts' own there;
    lambda 0 leaves it at what the experts do (the preserve inputs overlap both experts')."""
    x0, x1 = _split_inputs(2)
    preserve = torch.randn(64, 5, generator=torch.Generator().manual_seed(3))
    preserve[:, 2:] = 0  # dims 0-1: expert 0's subspace only, so expert 1 loses nothing
    experts = [_expert("a", 1), _expert("b", 2)]
    grams = _grams(experts, [x0, x1], preserve)
    layer = "down.attn1.to_q"
    ref = (preserve @ experts[0].layers[layer].delta().T).norm()
    for lam, bound in ((1e6, 1e-4), (0.0, None)):
        fused = _delta(
            merge_experts(experts, "regmean", grams=grams, regmean_lambda=lam, regmean_epsilon=1e-9), layer
        )
        ratio = ((preserve @ fused.T).norm() / ref).item()
        assert ratio < bound if bound else ratio == pytest.approx(1.0, abs=1e-6), (lam, ratio)
    kept = _delta(
        merge_experts(experts, "regmean", grams=grams, regmean_lambda=1e6, regmean_epsilon=1e-14), layer
    )
    assert _retained(kept, experts[1].layers[layer], x1) == pytest.approx(1.0, abs=1e-4)


def test_closed_form_rank_is_the_smallest_keeping_the_energy_and_the_card_numbers_say_so():
    """One expert with inputs of Gram I: the fused delta is the expert's, singular values 3, 2, 1 (energy
    9, 4, 1 of 14): keep 0.9 -> rank 2 keeping 13/14, keep 0.95 -> rank 3, a cap of 1 -> 9/14."""
    U, _ = torch.linalg.qr(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    V, _ = torch.linalg.qr(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))
    B, A = U * torch.tensor([3.0, 2.0, 1.0]), V.T
    expert = Expert("one", {"mid.attn2.to_v": LoraLayer(A=A, B=B, scale=1.0)}, "base", ["to_v"])
    x = torch.eye(5) * 5**0.5  # X^T X / n = I
    grams = _grams([expert], [x])
    for keep, cap, rank, energy in ((0.9, 3, 2, 13 / 14), (0.95, 3, 3, 1.0), (0.9, 1, 1, 9 / 14)):
        merged, info = regmean([expert], grams, lam=0.0, eps=1e-12, rank=cap, keep_energy=keep)
        assert merged["mid.attn2.to_v"][0].shape[0] == info["rank"] == rank
        assert info["kept_energy"] == pytest.approx(energy, abs=1e-6)
        assert info["kept_energy_min"] == pytest.approx(energy, abs=1e-6)


def test_normalised_comerge_svd_is_blind_to_an_experts_scale():
    """Scaling one expert's weights 50x changes none of the per-weight choices once scores are
    normalised per expert (rank 5 = full rank of a 6x5 delta, so the merged delta is the choice)."""
    quiet, loud = _expert("a", 0), _expert("b", 1, scale=50.0)
    _, inputs = _scores([quiet, loud])
    for layer in quiet.layers:
        deltas = torch.stack([quiet.layers[layer].delta(), loud.layers[layer].delta()])
        unscaled = deltas * torch.tensor([1.0, 1 / 100])[:, None, None]  # b at its own scale 0.5
        winner = normalized(unscaled.abs() * inputs[layer][:, None, :]).argmax(0, keepdim=True)
        assert 0 < winner.float().mean() < 1, "both experts win some weights"
        merged = merge_experts([quiet, loud], "comerge_svd", input_scores=inputs, rank=5, normalize=True)
        assert torch.allclose(_delta(merged, layer), deltas.gather(0, winner)[0], atol=1e-3)
        raw = merge_experts([quiet, loud], "comerge_svd", input_scores=inputs, rank=5)
        loud_wins = ((_delta(raw, layer) - deltas[1]).abs() < 1e-3).float().mean()
        assert loud_wins > 0.9 > (winner == 1).float().mean(), "unnormalised, the loud one wins nearly all"


@pytest.mark.parametrize("method", ["comerge_svd", "ties", "dare_ties"])
def test_svd_merges_keep_one_rank_where_it_exceeds_a_layers_own(method):
    """E*r = 6 is above a 3x4 layer's rank 3: that layer's factors are zero-padded to rank 6, so the
    merged LoRA still has one rank (one file, one adapter config) and the padding changes nothing."""
    g = torch.Generator().manual_seed(0)
    shapes = {"down.attn1.to_q": (6, 5), "mid.attn1.to_k": (3, 4)}
    experts = [
        Expert(f"e{i}", {k: LoraLayer(torch.randn(2, i_, generator=g), torch.randn(o, 2, generator=g), 1.0)
                         for k, (o, i_) in shapes.items()}, "base", ["to_q", "to_k"])
        for i in range(3)
    ]  # fmt: skip
    _, inputs = _scores(experts)
    merged = merge_experts(experts, method, input_scores=inputs, density=1.0)
    assert {A.shape[0] for A, _ in merged.values()} == {6}
    unpadded = merge_experts(experts, method, input_scores=inputs, density=1.0, rank=3)["mid.attn1.to_k"]
    assert torch.allclose(_delta(merged, "mid.attn1.to_k"), unpadded[1] @ unpadded[0], atol=1e-5)


def test_incompatible_experts_are_named():
    a, b = _expert("a", 0), _expert("b", 1)
    b.layers.pop("up.attn2.to_v")
    with pytest.raises(
        ValueError, match=r"expert b adapts other layers than expert a \(e.g. up.attn2.to_v\)"
    ):
        check_compatible([a, b])
    c = _expert("c", 2)
    c.base_model = "other/base"
    with pytest.raises(ValueError, match=r"expert c was trained on other/base, not on base"):
        check_compatible([a, c], "base")
    with pytest.raises(ValueError, match="unknown merge method 'avg'"):
        merge_experts([a], "avg")


@pytest.fixture(scope="module")
def two_experts(tmp_path_factory):
    from dpo import DPOConfig, train_expert
    from dpo.toy import TOY_RESOLUTION, toy_concepts, write_toy_dataset

    root = tmp_path_factory.mktemp("merge")
    data = write_toy_dataset(root / "data", toy_concepts(2, captions=2, held_out=1), pairs_per_caption=2)
    folders = []
    for category in ("concept-0", "concept-1"):
        config = DPOConfig(
            dataset=str(data), category=category, base="tiny:sd15", output_dir=str(root / category),
            cache_dir=str(root / "cache"), resolution=TOY_RESOLUTION, max_train_steps=3, train_batch_size=2,
            gradient_accumulation_steps=1, lr_warmup_steps=0, learning_rate=5e-2, scale_lr=False,
            checkpointing_steps=10, progress=False, seed=len(folders),
        )  # fmt: skip
        folders.append(train_expert(config).output_dir)
    return root, data, folders


def _assert_loads_in_diffusers(base: Path, folder: Path, merged: Expert) -> None:
    """``pipe.load_lora_weights(folder)`` puts the merged delta into the UNet (first layer checked)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.load_lora_weights(folder)
    layer = next(iter(merged.layers))
    module = pipe.unet.get_submodule(layer)
    loaded = (
        module.lora_B["default_0"].weight @ module.lora_A["default_0"].weight * module.scaling["default_0"]
    )
    assert torch.allclose(loaded, merged.layers[layer].delta(), atol=1e-6)


@pytest.mark.parametrize("method", ["comerge", "ties"])
def test_merged_lora_loads_in_diffusers_and_has_a_card(two_experts, method):
    from merge import load_expert
    from merge.__main__ import main

    root, data, folders = two_experts
    out = root / f"merged-{method}"
    args = ["--experts", *map(str, folders), "--base", "tiny:sd15", "--method", method, "--output_dir", str(out),
            "--cache_dir", str(root / "cache"), "--calibration", str(data), "--resolution", "8", "--no_progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "merge_summary.json").read_text())
    assert summary["rank"] == 8
    merged, experts = load_expert(str(out)), [load_expert(str(f)) for f in folders]
    if method == "comerge":
        assert sum(summary["channels_won"].values()) == sum(
            e.layers[k].B.shape[0] for e in experts[:1] for k in e.layers
        )
        for layer, lora in merged.layers.items():
            delta = lora.delta()
            rows = [
                torch.allclose(delta[o], e.layers[layer].delta()[o], atol=1e-6)
                for o in range(delta.shape[0])
                for e in experts
            ]
            assert sum(rows) >= delta.shape[0], "every merged row is some expert's row"
    _assert_loads_in_diffusers(root / "cache" / "tiny-models" / "sd15", out, merged)
    card = (out / "README.md").read_text()
    assert f"Merged safety LoRA ({method})" in card and "base_model: tiny:sd15" in card


def test_bad_merge_inputs_name_the_culprit(two_experts, tmp_path):
    from merge.__main__ import main

    root, _, folders = two_experts
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    common = [
        "--base",
        "tiny:sd15",
        "--output_dir",
        str(tmp_path / "m"),
        "--cache_dir",
        str(root / "cache"),
        "--no_progress",
    ]
    assert main(["--experts", str(folders[0]), "--method", "avg", *common]) == 2
    assert main(["--experts", str(folders[0]), str(tmp_path / "missing"), "--method", "linear", *common]) == 2
    assert (
        main(["--experts", *map(str, folders), "--method", "comerge", "--calibration", str(empty), *common])
        == 2
    )
    assert main(["--experts", *map(str, folders), "--method", "comerge", *common]) == 2
    assert (
        main(["--experts", *map(str, folders), "--method", "linear", "--base", "other/model", *common[2:]])
        == 2
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    regmean = ["--experts", *map(str, folders), "--method", "regmean", *common]
    assert main([*regmean, "--calibration", str(prompts)]) == 2, "own-category inputs need a dataset"
    assert (
        main([*regmean, "--calibration", str(prompts), "--preserve_prompts", str(tmp_path / "no.txt")]) == 2
    )
    assert main([*regmean, "--calibration", str(prompts), "--keep_energy", "1.5"]) == 2
    assert not any((tmp_path / "m").iterdir()), "nothing written (the folder is only probed for writing)"


def test_own_category_calibration_scores_each_expert_on_its_own_prompts(two_experts, tmp_path, capsys):
    from dpo.toy import toy_concepts, write_toy_dataset
    from merge import load_expert
    from merge.__main__ import main
    from merge.calibrate import activation_scores, calibration_prompts_by_category

    root, data, folders = two_experts
    experts = [load_expert(str(f)) for f in folders]
    assert [e.category for e in experts] == ["concept-0", "concept-1"], "read from training_summary.json"
    by_category = calibration_prompts_by_category(str(data), 2)
    prompts = by_category["concept-0"] + by_category["concept-1"]
    base = str(root / "cache" / "tiny-models" / "sd15")

    def scores(expert_prompts):
        rows, _ = activation_scores(
            base, experts, list(map(str, folders)), prompts, resolution=8, progress=False,
            expert_prompts=expert_prompts,
        )  # fmt: skip
        return rows

    every, own = scores(None), scores([[0, 1], [2, 3]])
    assert all(
        torch.equal(a, b) for a, b in zip(every.values(), scores([[0, 1, 2, 3]] * 2).values(), strict=True)
    )
    mixed = scores([[0, 1], [0, 1, 2, 3]])
    for layer in own:
        assert torch.allclose(own[layer][0], mixed[layer][0]), "an expert's scores depend on its prompts only"
        assert torch.allclose(every[layer][1], mixed[layer][1])
    assert not all(torch.allclose(own[layer][1], every[layer][1]) for layer in own)

    out = tmp_path / "own"
    common = ["--experts", *map(str, folders), "--base", "tiny:sd15", "--method", "comerge", "--cache_dir",
              str(root / "cache"), "--resolution", "8", "--no_progress", "--calibration_scope", "own"]  # fmt: skip
    assert main([*common, "--calibration", str(data), "--output_dir", str(out)]) == 0
    settings = json.loads((out / "merge_summary.json").read_text())["settings"]
    assert settings["calibration_scope"] == "own" and settings["normalize_scores"] is True
    assert "normalised per expert" in (out / "README.md").read_text()
    one = write_toy_dataset(tmp_path / "one", toy_concepts(1, captions=1, held_out=1), pairs_per_caption=1)
    capsys.readouterr()
    assert main([*common, "--calibration", str(one), "--output_dir", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err
    assert "expert concept-1 names category 'concept-1'" in error and "use --calibration_scope all" in error
    assert not any((tmp_path / "bad").glob("*")), "nothing written"


def test_prompt_token_mask_leaves_out_the_start_token_and_the_padding(tiny_models):
    from diffusers import DiffusionPipeline

    from dpo.families.unet import UNetFamily

    pipe = DiffusionPipeline.from_pretrained(str(tiny_models["sd15"]))
    prompts = ["a red kite", "a very long caption about a quiet harbor at dawn"]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    mask = UNetFamily().prompt_token_mask(pipe, prompts)
    for row, tokens in zip(mask.tolist(), ids, strict=True):
        end = tokens.index(pipe.tokenizer.eos_token_id)
        assert row == [False] + [True] * end + [False] * (len(tokens) - end - 1), "words and end token only"


def test_regmean_merges_cross_attention_experts_end_to_end(two_experts, tmp_path):
    """Experts on cross-attention keys and values only (``--target_modules attn2.to_k attn2.to_v``), merged
    with ``--method regmean``: the LoRA adapts exactly those layers, loads in diffusers, holds the fused
    delta, and its card and summary say how much of the fusion's energy the rank keeps."""

    from dpo import DPOConfig, train_expert
    from dpo.toy import TOY_RESOLUTION
    from merge import load_expert
    from merge.__main__ import main

    root, data, _ = two_experts
    folders = []
    for seed, category in enumerate(("concept-0", "concept-1")):
        config = DPOConfig(
            dataset=str(data), category=category, base="tiny:sd15", output_dir=str(tmp_path / category),
            cache_dir=str(root / "cache"), resolution=TOY_RESOLUTION, max_train_steps=3, train_batch_size=2,
            gradient_accumulation_steps=1, lr_warmup_steps=0, learning_rate=5e-2, scale_lr=False,
            checkpointing_steps=10, progress=False, seed=seed, target_modules=["attn2.to_k", "attn2.to_v"],
        )  # fmt: skip
        folders.append(train_expert(config).output_dir)
    experts = [load_expert(str(f)) for f in folders]
    assert all(layer.endswith((".attn2.to_k", ".attn2.to_v")) for layer in experts[0].layers)
    out = tmp_path / "merged"
    args = ["--experts", *map(str, folders), "--base", "tiny:sd15", "--method", "regmean", "--output_dir", str(out),
            "--cache_dir", str(root / "cache"), "--calibration", str(data), "--resolution", "8", "--no_progress",
            "--text_tokens", "prompt"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "merge_summary.json").read_text())
    assert summary["settings"]["calibration_scope"] == "own", (
        "regmean measures each expert on its own prompts"
    )
    assert summary["preserve_prompts"] == 40, "the shipped preserve list"
    assert 1 <= summary["rank"] <= 8 and summary["kept_energy_min"] >= 0.99
    merged = load_expert(str(out))
    assert set(merged.layers) == set(experts[0].layers)
    _assert_loads_in_diffusers(root / "cache" / "tiny-models" / "sd15", out, merged)
    card = (out / "README.md").read_text()
    assert "Merged safety LoRA (regmean)" in card and "energy kept by the LoRA (worst layer)" in card
    assert "preserve prompts from the shipped dpo/data/neutral_prompts.txt" in card
