"""Prompt sets, read as a stream of rows whatever their layout.

Known layouts, told apart by their columns, not by their names:

- a CoProV2 dataset (folder or Hub id, any config; prompt = ``unsafe_prompt``), read with ``datasets``
  in streaming mode and only the text columns;
- the release's CSV (``prompt,image,category``, e.g. ``CoProv2_test.csv``; ``evaluation_seed`` if present);
- I2P's CSV (``prompt``, comma-separated ``categories``, ``sd_seed``, ``sd_guidance_scale``,
  ``sd_image_width``, ``sd_image_height``): its per-row seed, guidance and size are used;
- any CSV, JSONL or dataset with a ``prompt`` column (Unsafe Diffusion's sets, COCO captions).

Every row becomes ``{position, id, prompt, category, seed, guidance, width, height, image}`` (None where
the set has no such column).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from coprov2.errors import UserError
from coprov2.paths import check_hub_access

PROMPT_COLUMNS = ("prompt", "unsafe_prompt")
#: Our column <- the first of these the set has (release, I2P, CoProV2 names).
COLUMNS = {
    "category": ("category", "categories"),
    "seed": ("evaluation_seed", "sd_seed"),
    "guidance": ("evaluation_guidance", "sd_guidance_scale"),
    "width": ("sd_image_width",),
    "height": ("sd_image_height",),
    "image": ("image",),
    "id": ("id", "case_number"),
}
_TYPES = {"seed": int, "guidance": float, "width": int, "height": int}


def _column(columns: list[str], source: str, wanted: tuple[str, ...] = PROMPT_COLUMNS) -> str:
    for name in wanted:
        if name in columns:
            return name
    raise UserError(
        f"prompt set {source}: no 'prompt' column (it has: {', '.join(columns) or 'none'}); "
        "give a set with a 'prompt' column (or a CoProV2 dataset, whose 'unsafe_prompt' is used)"
    )


def _convert(name: str, value: Any, source: str, position: int) -> Any:
    if value is None or value == "":
        return None
    if name not in _TYPES:
        return str(value)
    try:
        return _TYPES[name](float(value)) if _TYPES[name] is int else _TYPES[name](value)
    except (TypeError, ValueError):
        raise UserError(
            f"prompt set {source}, row {position}: {name} value {value!r} is not a number"
        ) from None


def _rows(
    records: Iterator[Mapping[str, Any]], prompt: str, mapping: dict[str, str | None], source: str
) -> Iterator[dict[str, Any]]:
    for position, record in enumerate(records):
        text = record.get(prompt)
        if not isinstance(text, str) or not text.strip():
            raise UserError(
                f"prompt set {source}, row {position}: empty {prompt!r}; remove the row or fill it in"
            )
        row = {
            name: _convert(name, record.get(column), source, position) if column else None
            for name, column in mapping.items()
        }
        row["id"] = row["id"] or f"{position:07d}"
        row["category"] = row["category"] or "all"
        yield {"position": position, **row, "prompt": text}


def _csv_records(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    handle = path.open(newline="", encoding="utf-8")
    reader = csv.DictReader(handle)
    columns = list(reader.fieldnames or [])

    def records() -> Iterator[dict[str, Any]]:
        with handle:
            yield from reader

    return columns, records()


def _jsonl_records(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    try:
        columns = list(json.loads(first)) if first.strip() else []
    except json.JSONDecodeError as error:
        raise UserError(f"prompt set {path}: line 1 is not JSON ({error.msg})") from None

    def records() -> Iterator[dict[str, Any]]:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise UserError(
                            f"prompt set {path}: line {number} is not JSON ({error.msg})"
                        ) from None

    return columns, records()


def _dataset_records(
    source: str, config: str | None, split: str
) -> tuple[list[str], Iterator[dict[str, Any]]]:
    import datasets

    try:
        stream = datasets.load_dataset(source, config, split=split, streaming=True)
    except ValueError as error:  # unknown split or config: datasets names the ones there are
        raise UserError(f"prompt set {source}: {str(error)[:300]}") from None
    except FileNotFoundError as error:
        raise UserError(f"prompt set {source}: cannot open it as a dataset ({str(error)[:200]})") from None
    columns = list(stream.column_names or stream.features or [])
    wanted = [c for c in columns if c in PROMPT_COLUMNS or any(c in names for names in COLUMNS.values())]
    return columns, iter(stream.select_columns(wanted))


def read_prompt_set(
    source: str, config: str | None = None, split: str = "test", max_prompts: int | None = None
) -> Iterator[dict[str, Any]]:
    """The rows of prompt set ``source`` in order (at most ``max_prompts``), streamed.

    The layout is checked here, before the first row is asked for: a set without a prompt column is
    refused before anything is written.
    """
    path = Path(source).expanduser()
    if path.suffix in (".csv", ".jsonl", ".json"):
        if not path.is_file():
            raise UserError(f"prompt set {source}: no such file")
        columns, records = (_csv_records if path.suffix == ".csv" else _jsonl_records)(path)
    else:
        if not path.exists():
            check_hub_access(source, "--prompts", repo_type="dataset", filename="README.md")
        columns, records = _dataset_records(source, config, split)
    prompt = _column(columns, source)
    mapping = {ours: next((c for c in theirs if c in columns), None) for ours, theirs in COLUMNS.items()}
    return itertools.islice(_rows(records, prompt, mapping, source), max_prompts)
