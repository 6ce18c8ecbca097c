"""Names that may be published: what a card, a model-index, a report or a pushed summary prints for an input.

A Hub id (or ``tiny:``, or a published set's name) is printed as it is; a local file or folder by its own name,
a dataset folder by its card's ``pretty_name`` too, never by its absolute path: a card pushed to the Hub must
not show the user's home directory, and a path resolves to nothing for its readers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Where a LoRA's usage snippet points before the folder is pushed (``cards.push`` writes the repo id in).
USAGE_PLACEHOLDER = "path/to/this/folder"
#: Written by ``cards.push`` into a folder it pushed: the repo id, by which the folder is named from then on.
HUB_REPO_FILE = ".hub_repo_id"
#: Settings that say where a run wrote, not what it made: left out of what is published.
LOCAL_ONLY = ("output_dir", "cache_dir", "logging_dir")


def is_local_path(value: str) -> bool:
    """An absolute path, or a relative one naming a file or folder here (not a Hub id, not ``tiny:``)."""
    return not value.startswith("tiny:") and (
        os.path.isabs(os.path.expanduser(value)) or Path(value).exists()
    )


def public_name(source: str) -> str:
    """``source`` as a card or report may print it: a Hub id unchanged; a folder that was pushed by the repo id it
    went to; a local path by its last part, and a dataset folder with a card as ``<pretty_name>, folder <name>/``."""
    if not is_local_path(source):
        return source
    path = Path(source).expanduser().resolve()
    if (path / HUB_REPO_FILE).is_file():
        return (path / HUB_REPO_FILE).read_text(encoding="utf-8").strip()
    card = path / "README.md"
    if path.is_dir() and card.is_file():
        from huggingface_hub import DatasetCard

        pretty = DatasetCard.load(card).data.to_dict().get("pretty_name")
        if pretty:
            return f"{pretty}, folder {path.name}/"
    return path.name


def public_value(value: Any) -> Any:
    """A setting's value with every local path replaced by its public name (lists element by element)."""
    if isinstance(value, str) and is_local_path(value):
        return public_name(value)
    if isinstance(value, list | tuple):
        return [public_value(v) for v in value]
    return value


def public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as published: no output or cache folder, every path by its public name."""
    return {key: public_value(value) for key, value in settings.items() if key not in LOCAL_ONLY}
