"""What the closed-form fusion (``--method regmean``) costs at SD1.5 shape, on this machine's CPU.

Random weights from configs in code (the UNet and VAE shapes of ``benchmarks/dpo_trainer.py``, a CLIP-L-
shaped text tower over the tiny tokenizer), 7 random rank-4 experts on the release's four projections of
every attention (128 layers), each with its own calibration prompts. Each phase runs in its own process, so
its peak RSS is its own:

- ``reference``: ``merge.calibrate.calibration_pass`` with a recorder that keeps nothing: the UNet
  forwards and the hooks' copies of the inputs, what any calibration pays;
- ``grams``: the same pass with ``GramRecorder`` (the fusion's statistics), then the per-layer float64
  solve and SVD (``merge.methods.regmean``); beside it, in the same process, ``comerge_svd``'s merge of
  the same experts (per-weight choice + SVD; its scores random: only its cost is measured).

The ratios quoted are grams / reference (calibration time, peak RSS) and regmean / comerge_svd (merge
time). The resolution, prompts and timesteps are smaller than a real run's so that the CPU finishes; the
Grams' size does not depend on them (it is set by the layers' widths), the pass time grows linearly.

    python benchmarks/merge_cost.py --out /tmp/merge-cost [--resolution 256] [--prompts 2] [--timesteps 500 900]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from dpo_trainer import SD15_UNET, SD15_VAE

EXPERTS, RANK = 7, 4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def build(out: Path) -> None:
    """The SD1.5-shaped pipeline and 7 random experts, written once."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from coprov2.tiny import _sd_scheduler, clip_tokenizer
    from merge.experts import save_merged

    if (out / "experts" / f"e{EXPERTS - 1}" / "pytorch_lora_weights.safetensors").exists():
        return
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    unet = UNet2DConditionModel(**SD15_UNET)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out / "base")
    suffixes = tuple(f".{attention}.{target}" for attention in ("attn1", "attn2") for target in TARGETS)
    layers = {name: module for name, module in unet.named_modules() if name.endswith(suffixes)}
    for e in range(EXPERTS):
        g = torch.Generator().manual_seed(100 + e)
        merged = {
            name: (
                torch.randn(RANK, m.in_features, generator=g) / m.in_features**0.5,
                torch.randn(m.out_features, RANK, generator=g) * 0.01,
            )
            for name, m in layers.items()
        }
        save_merged(merged, str(out / "base"), out / "experts" / f"e{e}", TARGETS)


class NoRecorder:
    """The reference: takes every layer's inputs and keeps nothing."""

    def record(self, layer: str, expert: int | None, x: torch.Tensor) -> None:
        pass

    def finish(self, expert: int | None) -> None:
        pass


def phase(out: Path, name: str, args) -> dict[str, float]:
    """One phase in this process; returns its seconds and peak RSS."""
    from merge.calibrate import GramRecorder, calibration_pass
    from merge.experts import load_expert
    from merge.methods import merge_experts

    sources = [str(out / "experts" / f"e{e}") for e in range(EXPERTS)]
    experts = [load_expert(s) for s in sources]
    words = ["lantern", "harbor", "orchard", "violin", "glacier", "meadow", "tram"]
    prompts = [f"a photo of a {w}, view {i}" for w in words[:EXPERTS] for i in range(args.prompts)]
    own = [list(range(e * args.prompts, (e + 1) * args.prompts)) for e in range(EXPERTS)]
    preserve = ["a bowl of fruit on a table", "a city street at night", "a dog in a park", "a lake at dawn"]
    recorder = GramRecorder(experts) if name == "grams" else NoRecorder()
    start = time.perf_counter()
    calibration_pass(
        str(out / "base"), experts, sources, prompts, recorder, timesteps=tuple(args.timesteps),
        resolution=args.resolution, sample_steps=args.sample_steps, progress=False, expert_prompts=own,
        preserve_prompts=preserve,
    )  # fmt: skip
    result = {"calibration_s": time.perf_counter() - start, "layers": len(experts[0].layers)}
    if name == "grams":
        start = time.perf_counter()
        info: dict[str, float] = {}
        merge_experts(experts, "regmean", grams=recorder.grams, info=info)
        result["regmean_merge_s"] = time.perf_counter() - start
        result.update(info)
        g = torch.Generator().manual_seed(0)
        scores = {
            k: torch.rand(EXPERTS, lora.A.shape[1], generator=g) for k, lora in experts[0].layers.items()
        }
        start = time.perf_counter()
        merge_experts(experts, "comerge_svd", input_scores=scores, normalize=True)
        result["comerge_svd_merge_s"] = time.perf_counter() - start
        result["gram_bytes"] = sum(
            t.numel() * t.element_size()
            for g in recorder.grams.values()
            for t in (g.M, g.S, g.G0)
            if t is not None
        )
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("merge-cost"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=2, help="calibration prompts per expert")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[500, 900])
    parser.add_argument("--sample_steps", type=int, default=2, help="steps of the base's calibration samples")
    parser.add_argument("--phase", choices=("reference", "grams"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.out, args.phase, args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out)
    results = {}
    for name in ("reference", "grams"):
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--phase", name],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    reference, grams = results["reference"], results["grams"]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"SD1.5 shape, {EXPERTS} experts rank {RANK}, {grams['layers']} layers, {args.resolution} px, "
        f"{args.prompts} prompts/expert + 4 preserve, timesteps {args.timesteps}, CPU {torch.get_num_threads()} threads\n"
        f"| phase | calibration s | peak RSS GiB |\n|---|---|---|\n"
        f"| reference (no statistics) | {reference['calibration_s']:.1f} | {reference['peak_rss_gib']:.2f} |\n"
        f"| regmean Grams | {grams['calibration_s']:.1f} | {grams['peak_rss_gib']:.2f} |\n"
        f"| ratio | {grams['calibration_s'] / reference['calibration_s']:.2f} | "
        f"{grams['peak_rss_gib'] / reference['peak_rss_gib']:.2f} |\n\n"
        f"Grams held: {grams['gram_bytes'] / 2**30:.2f} GiB (float64 M, S, G0 of every layer; + one expert's "
        f"running Gram). Merge: regmean solve + SVD {grams['regmean_merge_s']:.1f} s (rank {grams['rank']}, "
        f"energy kept {grams['kept_energy']:.4f}), comerge_svd {grams['comerge_svd_merge_s']:.1f} s, ratio "
        f"{grams['regmean_merge_s'] / grams['comerge_svd_merge_s']:.2f}."
    )


if __name__ == "__main__":
    main()
