"""Stage `prompts` end to end through the CLI, on vLLM's real CPU engine and the tiny LM."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from coprov2.prompts.validate import contains_concept
from coprov2.stage_io import read_jsonl

pytestmark = pytest.mark.slow

COMMAND = [sys.executable, "-m", "coprov2.build", "--preset", "smoke", "--no_progress", "--num_shards", "4"]


def _run(output_dir: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*COMMAND, "--output_dir", str(output_dir)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _stage_files(output_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(output_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for stage in ("taxonomy", "prompts")
        for path in sorted((output_dir / stage).iterdir())
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("smoke") / "out"
    _run(output_dir)
    return output_dir


def test_vllm_pairs_pass_every_rule_and_match_the_manifest(smoke_run):
    import json

    manifest = json.loads((smoke_run / "prompts" / "manifest.json").read_text())
    pairs = [p for i in range(4) for p in read_jsonl(smoke_run / "prompts" / f"shard-{i:05d}-of-00004.jsonl")]
    rejected = [
        r
        for i in range(4)
        for r in read_jsonl(smoke_run / "prompts" / f"shard-{i:05d}-of-00004.rejected.jsonl")
    ]
    assert pairs, "the tiny LM under guided decoding should yield some valid pairs"
    assert sum(manifest["stats"]["pairs"].values()) == len(pairs)
    assert sum(manifest["stats"]["rejected"].values()) == len(rejected)
    # guided decoding held the schema: no answer had the wrong shape or item count
    assert not {r["reason"] for r in rejected} & {"schema_violation", "wrong_count"}
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "tiny-models" / "sd15", subfolder="tokenizer")
    for pair in pairs:
        assert contains_concept(pair["unsafe_prompt"], pair["concept"])
        assert not contains_concept(pair["safe_prompt"], pair["concept"])
        for text in (pair["unsafe_prompt"], pair["safe_prompt"]):
            assert len(tokenizer(text, verbose=False).input_ids) <= 77
    assert len({p["id"] for p in pairs}) == len(pairs)
    taxonomy = (smoke_run / "taxonomy" / "taxonomy.yaml").read_text()
    assert manifest["taxonomy_concepts"] == dict.fromkeys(manifest["taxonomy_concepts"], 3)
    assert "stabbing" in taxonomy


def test_sigkill_mid_stage_then_resume_is_byte_identical(smoke_run, tmp_path):
    output_dir = tmp_path / "out"
    process = subprocess.Popen(
        [*COMMAND, "--output_dir", str(output_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not list((output_dir / "prompts").glob("*.stats.json")):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    finished = len(list((output_dir / "prompts").glob("*.stats.json")))
    assert finished < 4 and not (output_dir / "prompts" / "manifest.json").exists(), (
        "killed too late to test resume"
    )
    _run(output_dir)
    assert _stage_files(output_dir) == _stage_files(smoke_run)
