"""Push an artifact folder (dataset, expert, merged LoRA) to the Hub: a **private** repo, gated, then the upload.

Order matters: the repo is created private and its gate is set before any file goes up, so the data
is never reachable ungated (``gated=None`` skips the gate, for models). ``public=True`` is the only way to a public repo. The token is never
handled here: ``HfApi`` reads it from ``HF_TOKEN`` or the ``hf auth login`` cache, and nothing in this
module logs request headers. ``upload_folder`` batches large folders into several commits and, re-run
after an interruption, skips what is already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled

from cards.public import HUB_REPO_FILE, USAGE_PLACEHOLDER
from coprov2.errors import UserError
from coprov2.stage_io import atomic_write_text

logger = logging.getLogger(__name__)

GATING = ("manual", "auto")


def push_plan(
    folder: Path,
    repo_id: str,
    gated: str | None,
    public: bool,
    repo_type: str = "dataset",
    ignore: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The Hub calls a push makes, in order, with the files it uploads (top-level folders in ``ignore`` stay local)."""
    if gated is not None and gated not in GATING:
        raise UserError(f"hub_gated must be one of {', '.join(GATING)}, got {gated!r}")
    files = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(folder).parts[0] not in ignore and path.name != HUB_REPO_FILE
    )
    if "README.md" not in files:
        raise UserError(f"{folder} has no README.md: write its card before pushing")
    create = {
        "call": "create_repo",
        "repo_id": repo_id,
        "repo_type": repo_type,
        "private": not public,
        "exist_ok": True,
    }
    gate = [{"call": "update_repo_settings", "repo_id": repo_id, "repo_type": repo_type, "gated": gated}]
    upload = {
        "call": "upload_folder",
        "repo_id": repo_id,
        "repo_type": repo_type,
        "folder_path": str(folder),
        "commit_message": f"Upload {folder.name} with alignguard",
        "ignore_patterns": [*(f"{name}/**" for name in ignore), HUB_REPO_FILE],
        "files": files,
    }
    return [create, *(gate if gated is not None else []), upload]


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "dataset",
    gated: str | None = "manual",
    public: bool = False,
    dry_run: bool = False,
    ignore: tuple[str, ...] = (),
    api: HfApi | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Create (private), gate and upload; with ``dry_run`` only print the calls and files."""
    folder = Path(folder)
    plan = push_plan(folder, repo_id, gated, public, repo_type, ignore)
    if dry_run:
        for step in plan:
            arguments = ", ".join(f"{k}={v!r}" for k, v in step.items() if k not in ("call", "files"))
            echo(f"would call HfApi.{step['call']}({arguments})")
        for name in plan[-1]["files"]:
            echo(f"  would upload {name} ({(folder / name).stat().st_size} bytes)")
        return plan
    if constants.is_offline_mode():
        raise UserError("offline: set HF_HUB_OFFLINE=0 or use --dry_run")
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8")
    if USAGE_PLACEHOLDER in text:  # the usage snippet loads the repo it is pushed to from now on
        atomic_write_text(card, text.replace(USAGE_PLACEHOLDER, repo_id))
    api = api or HfApi()
    for step in plan:
        arguments = {k: v for k, v in step.items() if k not in ("call", "files")}
        logger.info("HfApi.%s(%s)", step["call"], ", ".join(f"{k}={v!r}" for k, v in arguments.items()))
        try:
            getattr(api, step["call"])(**arguments)
        except (httpx2.TransportError, OfflineModeIsEnabled) as error:
            raise UserError(
                f"cannot reach the Hub for {repo_id} ({type(error).__name__}); check the network, or use --dry_run"
            ) from None
    atomic_write_text(folder / HUB_REPO_FILE, repo_id + "\n")  # cards name the folder by its repo from now on
    echo(
        f"pushed {len(plan[-1]['files'])} files to {repo_type} repo {repo_id} (private={not public}, gated={gated})"
    )
    return plan
