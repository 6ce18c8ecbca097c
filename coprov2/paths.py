"""Checks of paths and model names at the edge, before any work starts (one message per bad input)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from coprov2.errors import UserError


def user_cache_dir(name: str) -> str:
    """``$XDG_CACHE_HOME/alignguard/<name>`` (``~/.cache`` without it): where a tool keeps its caches."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "alignguard", name)


def check_writable_dir(path: str | Path, option: str) -> None:
    """``path`` is (or can be created as) a folder this process can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"{option} {path}: cannot write there ({error.strerror}); pick a writable folder"
        ) from None


def check_model(name: str, option: str) -> None:
    """``name`` is ``tiny:<kind>``, an existing local folder or file, or a well-formed Hub repo id."""
    if name.startswith("tiny:") or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")):
        raise UserError(f"{option} {name}: no such folder")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{option} {name!r}: no such folder, and not a Hub repo id (owner/name)") from None
