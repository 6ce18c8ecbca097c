"""Artifacts whose bytes repeat: the same expert written by several processes is the same file, and pushing
it again makes no Hub commit."""

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cards.push import push_folder
from coprov2.canonical import canonicalize
from dpo.toy import TOY_RESOLUTION, toy_concepts, write_toy_dataset
from tests.mock_hub import install_mock_hub

PROCESSES = 3


def _reorder_header(path: Path) -> None:
    """Rewrite ``path``'s header with every key order reversed, as another process's HashMap might."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    reversed_header = {
        k: dict(reversed(v.items())) if isinstance(v, dict) else v for k, v in reversed(header.items())
    }
    text = json.dumps(reversed_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def test_canonical_bytes_do_not_depend_on_the_header_order(tmp_path):
    tensors = {"b.lora_B.weight": torch.arange(6.0).view(2, 3), "a.lora_A.weight": torch.ones(3, 2)}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({"r": 2}), "z": "last"}
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file(tensors, first, metadata=metadata)
    save_file(tensors, second, metadata=metadata)
    _reorder_header(second)
    assert first.read_bytes() != second.read_bytes()
    canonicalize(first)
    assert canonicalize(second)
    assert first.read_bytes() == second.read_bytes()
    assert not canonicalize(second), "a canonical file is left as it is"
    with safe_open(second, "pt") as reader:
        assert reader.metadata() == metadata
        assert all(torch.equal(reader.get_tensor(name), tensor) for name, tensor in tensors.items())


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in (".safetensors", ".md", ".json", ".jsonl")
    }


def test_the_same_expert_from_several_processes_is_the_same_bytes_and_a_second_push_commits_nothing(
    tmp_path, monkeypatch
):
    data = write_toy_dataset(tmp_path / "data", toy_concepts(1, captions=2, held_out=1), pairs_per_caption=2)
    command = [sys.executable, "-m", "dpo.train", "--dataset", str(data), "--category", "concept-0",
               "--base", "tiny:sd15", "--output_dir", "expert", "--cache_dir", "cache",
               "--resolution", str(TOY_RESOLUTION), "--max_train_steps", "2", "--train_batch_size", "2",
               "--checkpointing_steps", "1", "--no_progress"]  # fmt: skip
    runs = [tmp_path / f"run-{i}" for i in range(PROCESSES)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for run in runs:
        run.mkdir()
    processes = [
        subprocess.Popen(command, cwd=run, env=env, stderr=subprocess.PIPE, text=True) for run in runs
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    digests = [_digests(run) for run in runs]
    assert "expert/pytorch_lora_weights.safetensors" in digests[0]
    assert any(
        name.startswith("expert/checkpoints/") and name.endswith(".safetensors") for name in digests[0]
    )
    assert any(name.startswith("cache/") and name.endswith(".safetensors") for name in digests[0]), (
        "tiny model"
    )
    assert all(d == digests[0] for d in digests[1:]), [
        set(d.items()) ^ set(digests[0].items()) for d in digests
    ]

    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890abcdef")
    hub = install_mock_hub(monkeypatch)
    for run in runs:
        push_folder(run / "expert", "me/expert", repo_type="model", gated=None, ignore=("checkpoints",))
    assert hub.commits == 1
    assert (
        hub.committed["pytorch_lora_weights.safetensors"]
        == (runs[-1] / "expert" / "pytorch_lora_weights.safetensors").read_bytes()
    )
