"""Canonical bytes for every ``.safetensors`` file the toolkit writes: the same tensors, the same file.

safetensors serializes the header's ``__metadata__`` from a Rust ``HashMap``, so a file with two or more
metadata keys (every diffusers LoRA: ``format`` plus the adapter config) comes out in a per-process random
key order (huggingface/safetensors#584, open). Equal experts then hash differently, a rerun that changes
nothing re-uploads every file and makes a Hub commit, and no one can check an artifact by its sha256.

The writers (diffusers ``save_lora_weights``, transformers/diffusers ``save_pretrained``, accelerate
``save_state``) own the file, so this module rewrites the header afterwards: the same JSON with every key
sorted, compact, space-padded to 8 bytes as safetensors pads it. Readers locate tensors by their explicit
offsets, so the order of the header's keys is free; the tensor bytes are copied unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

_LENGTH = struct.Struct("<Q")


def canonical_header(header: dict) -> bytes:
    """``header`` as safetensors JSON with sorted keys, padded with spaces to a multiple of 8 bytes."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def canonicalize(path: str | Path) -> bool:
    """Rewrite ``path`` with its header in canonical order (atomically); False if it already was."""
    path = Path(path)
    with path.open("rb") as source:
        (length,) = _LENGTH.unpack(source.read(_LENGTH.size))
        raw = source.read(length)
        header = canonical_header(json.loads(raw))
        if header == raw:
            return False
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as target:
            target.write(_LENGTH.pack(len(header)) + header)
            shutil.copyfileobj(source, target, 1 << 24)
    os.replace(partial, path)
    return True


def canonicalize_tree(folder: str | Path) -> int:
    """:func:`canonicalize` every ``.safetensors`` file under ``folder``; how many were rewritten."""
    return sum(canonicalize(path) for path in sorted(Path(folder).rglob("*.safetensors")))
