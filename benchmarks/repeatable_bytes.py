"""Do equal experts come out as equal files, and does pushing one again make a Hub commit?

Each of ``--processes`` fresh Python processes builds the same tiny SD1.5 UNet with the same seeded rank-4
LoRA and writes it twice:

- ``reference``: diffusers' own ``save_lora_weights`` with the adapter config as metadata, exactly what
  ``dpo/save.py`` called before canonical bytes (so the safetensors header's ``__metadata__`` comes out in
  the per-process order of a Rust ``HashMap``, huggingface/safetensors#584);
- ``ours``: ``dpo.save.save_lora``, the same call followed by ``coprov2.canonical.canonicalize``.

The parent prints the distinct sha256 values per writer, then pushes each process's folder in turn to one
repo of a mock Hub (tests/mock_hub.py: the real ``HfApi`` and upload code, only the HTTP transport is
replaced; it answers preupload with the stored files' git oids as the Hub does) and counts the commits.

    python benchmarks/repeatable_bytes.py --processes 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHTS = "pytorch_lora_weights.safetensors"


def child(out: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    from coprov2.tiny import resolve_tiny_model
    from dpo.save import save_lora

    base = resolve_tiny_model("tiny:sd15", str(out.parent / "models"))
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    save_lora(unet, base, out / "ours")
    (out / "ours" / "README.md").write_text("---\nlicense: mit\n---\n# expert\n")
    from diffusers.utils import convert_state_dict_to_diffusers

    metadata = unet.peft_config["default"].to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    StableDiffusionPipeline.save_lora_weights(
        out / "reference",
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=metadata,
    )
    (out / "reference" / "README.md").write_text("---\nlicense: mit\n---\n# expert\n")


def commits_of_pushes(folders: list[Path]) -> int:
    """Push every folder in turn to one mock-Hub repo; how many commits the Hub received."""
    import pytest

    from cards.push import push_folder
    from tests.mock_hub import install_mock_hub

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890abcdef")
        hub = install_mock_hub(monkeypatch)
        for folder in folders:
            push_folder(folder, "me/expert", repo_type="model", gated=None, echo=lambda _: None)
        return hub.commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"process-{i}" for i in range(args.processes)]
        for run in runs:  # one after another: each is its own process, so each has its own HashMap seed
            subprocess.run([sys.executable, __file__, "--child", str(run)], check=True, capture_output=True)
        table = {}
        for writer in ("reference", "ours"):
            digests = [hashlib.sha256((run / writer / WEIGHTS).read_bytes()).hexdigest() for run in runs]
            table[writer] = {
                "distinct_sha256": len(set(digests)),
                "sha256": digests,
                "hub_commits": commits_of_pushes([run / writer for run in runs]),
            }
    print(json.dumps({"processes": args.processes, **table}, indent=2))
    print(
        f"\n| writer | distinct sha256 over {args.processes} processes | Hub commits for {args.processes} pushes |"
        "\n|---|---|---|"
    )
    for writer, row in table.items():
        print(f"| {writer} | {row['distinct_sha256']} | {row['hub_commits']} |")


if __name__ == "__main__":
    main()
