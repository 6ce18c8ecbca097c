"""Push the dataset folder to the Hub: a **private** dataset repo, gated, then the upload.

Order matters: the repo is created private and its gate is set before any file goes up, so the data
is never reachable ungated. ``public=True`` is the only way to a public repo. The token is never
handled here: ``HfApi`` reads it from ``HF_TOKEN`` or the ``hf auth login`` cache, and nothing in this
module logs request headers. ``upload_folder`` batches large folders into several commits and, re-run
after an interruption, skips what is already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

GATING = ("manual", "auto")


def push_plan(folder: Path, repo_id: str, gated: str, public: bool) -> list[dict[str, Any]]:
    """The Hub calls a push makes, in order, with the files it uploads."""
    if gated not in GATING:
        raise ValueError(f"hub_gated must be one of {', '.join(GATING)}, got {gated!r}")
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    if "README.md" not in files:
        raise FileNotFoundError(f"{folder} has no README.md: export the dataset (its card) before pushing")
    return [
        {
            "call": "create_repo",
            "repo_id": repo_id,
            "repo_type": "dataset",
            "private": not public,
            "exist_ok": True,
        },
        {"call": "update_repo_settings", "repo_id": repo_id, "repo_type": "dataset", "gated": gated},
        {
            "call": "upload_folder",
            "repo_id": repo_id,
            "repo_type": "dataset",
            "folder_path": str(folder),
            "commit_message": "Upload CoProV2 dataset built with alignguard",
            "files": files,
        },
    ]


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    gated: str = "manual",
    public: bool = False,
    dry_run: bool = False,
    api: HfApi | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Create (private), gate and upload; with ``dry_run`` only print the calls and files."""
    folder = Path(folder)
    plan = push_plan(folder, repo_id, gated, public)
    if dry_run:
        for step in plan:
            arguments = ", ".join(f"{k}={v!r}" for k, v in step.items() if k not in ("call", "files"))
            echo(f"would call HfApi.{step['call']}({arguments})")
        for name in plan[-1]["files"]:
            echo(f"  would upload {name} ({(folder / name).stat().st_size} bytes)")
        return plan
    api = api or HfApi()
    for step in plan:
        arguments = {k: v for k, v in step.items() if k not in ("call", "files")}
        logger.info("HfApi.%s(%s)", step["call"], ", ".join(f"{k}={v!r}" for k, v in arguments.items()))
        getattr(api, step["call"])(**arguments)
    echo(
        f"pushed {len(plan[-1]['files'])} files to https://huggingface.co/datasets/{repo_id} (private={not public}, gated={gated})"
    )
    return plan
