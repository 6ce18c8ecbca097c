"""merge/: known answers of every method on synthetic experts, then experts from dpo/ merged end to end."""

import json

import pytest
import torch

from merge.experts import Expert, LoraLayer, check_compatible
from merge.methods import METHODS, comerge, merge_experts


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


@pytest.mark.parametrize("method", METHODS)
def test_one_expert_comes_back_unchanged(method):
    expert = _expert("only", 0)
    rows, inputs = _scores([expert])
    merged = merge_experts([expert], method, row_scores=rows, input_scores=inputs, density=1.0)
    for layer, lora in expert.layers.items():
        assert torch.allclose(_delta(merged, layer), lora.delta(), atol=1e-4), method


@pytest.mark.parametrize("method", METHODS)
def test_identical_experts_give_the_same_delta(method):
    experts = [_expert("a", 0), _expert("b", 0), _expert("c", 0)]
    rows, inputs = _scores(experts)
    merged = merge_experts(experts, method, row_scores=rows, input_scores=inputs, density=1.0)
    factor = 3.0 if method == "sum" else 1.0  # concatenation adds the three deltas
    for layer, lora in experts[0].layers.items():
        assert torch.allclose(_delta(merged, layer), factor * lora.delta(), atol=1e-4), method


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


@pytest.mark.parametrize("method", ["comerge", "ties"])
def test_merged_lora_loads_in_diffusers_and_has_a_card(two_experts, method):
    from diffusers import DiffusionPipeline

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
    pipe = DiffusionPipeline.from_pretrained(str(root / "cache" / "tiny-models" / "sd15"))
    pipe.load_lora_weights(out)
    layer = next(iter(merged.layers))
    module = pipe.unet.get_submodule(layer)
    loaded = (
        module.lora_B["default_0"].weight @ module.lora_A["default_0"].weight * module.scaling["default_0"]
    )
    assert torch.allclose(loaded, merged.layers[layer].delta(), atol=1e-6)
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
    with pytest.raises(SystemExit):
        main(["--experts", str(folders[0]), "--method", "avg", *common])
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
