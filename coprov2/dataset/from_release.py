"""The authors' CoProV2 release as a dataset of this toolkit: ``load_dataset(OUT, "violence")`` and
``python -m dpo.train --dataset OUT`` then work on the published data.

The release ships, per split, a CSV ``prompt,image,category`` (``prompt`` is the unsafe prompt,
``image`` names a pair ``0000000_0.jpg``) and the images ``u_idx_<image>`` (unsafe) and
``s_idx_<image>`` (safe) in a folder or a zip. Each CSV row becomes a row here, its two images
embedded as they are (no re-encoding). Quirks of the release, each handled and counted:

- a pair listed under several categories is repeated once per category: it is kept in each of
  those categories (``multi_category`` in the summary), as the release's training sees it;
- the misspelled ``Harrasment`` and other spellings map to our config names
  (:func:`~coprov2.dataset.release_layout.from_release_category`); ``release_category`` keeps them;
- rows that cannot be paired are skipped with their CSV line and reason in ``skipped_rows.jsonl``:
  ``missing_unsafe_image`` (a safe image without its unsafe twin), ``missing_safe_image``,
  ``missing_images`` (neither), ``duplicate_row`` (the same image and category again),
  ``empty_prompt``, ``corrupt_image``.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Features, Value
from datasets.utils.py_utils import convert_file_size_to_int
from PIL import Image

from cards.dataset_card import release_dataset_card
from coprov2.dataset.export import FEATURES, SIMILARITY_NAMES, configs_for, split_rows
from coprov2.dataset.info import dataset_infos
from coprov2.dataset.parquet_writer import ShardedParquetWriter
from coprov2.dataset.release_layout import PROMPT_COLUMNS, from_release_category
from coprov2.errors import UserError
from coprov2.gate.clip_scores import SCORE_NAMES
from coprov2.stage_io import atomic_write_jsonl, file_sha256, staging_folder, swap_in

RELEASE_FEATURES = Features(
    {**FEATURES, "release_category": Value("string"), "release_image": Value("string")}
)


def config_name(release_category: str) -> str:
    """Our config name for a release category: the known spellings mapped, any other one slugified."""
    return re.sub(r"[^a-z0-9]+", "-", from_release_category(release_category).lower()).strip("-") or "unknown"


class ImageSource:
    """The release's images by file name, from a folder (searched recursively) or a zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self.zip = None
            self.names = {p.name: p for p in sorted(path.rglob("*_idx_*")) if p.is_file()}
        elif zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            self.names = {}
            for member in self.zip.namelist():
                self.names.setdefault(Path(member).name, member)
        else:
            raise UserError(f"{path}: not a folder or a zip of the release's images")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str) -> bytes:
        return self.zip.read(self.names[name]) if self.zip else self.names[name].read_bytes()


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(PROMPT_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                f"{path}: not a CoProV2 release CSV, columns {sorted(missing)} are missing "
                f"(it has {reader.fieldnames}); expected {','.join(PROMPT_COLUMNS)}"
            )
        yield from enumerate(reader, start=2)


def import_release(
    csvs: dict[str, Path], images: Path, output: Path, max_shard_size: str = "500MB"
) -> dict[str, Any]:
    """Convert the release (``csvs``: split -> CSV) into a dataset folder at ``output``; returns the summary."""
    for split, path in csvs.items():
        if not Path(path).is_file():
            raise UserError(f"{path}: the {split} CSV does not exist")
    source = ImageSource(Path(images))
    max_bytes = convert_file_size_to_int(max_shard_size)
    staging = staging_folder(output)
    try:
        summary = _convert(csvs, source, staging, max_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind
        raise
    swap_in(staging, output)
    return summary


def _convert(csvs: dict[str, Path], source: ImageSource, staging: Path, max_bytes: int) -> dict[str, Any]:
    writers: dict[tuple[str, str], ShardedParquetWriter] = {}
    skipped: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    categories_of: dict[str, set[str]] = defaultdict(set)
    for split, path in csvs.items():
        for line, row in _csv_rows(Path(path)):
            image, category = row["image"].strip(), config_name(row["category"])
            unsafe, safe = f"u_idx_{image}", f"s_idx_{image}"
            reason = None
            if not row["prompt"].strip():
                reason = "empty_prompt"
            elif (image, category) in seen:
                reason = "duplicate_row"
            elif unsafe not in source and safe not in source:
                reason = "missing_images"
            elif unsafe not in source:
                reason = "missing_unsafe_image"
            elif safe not in source:
                reason = "missing_safe_image"
            if reason:
                skipped.append({"csv": Path(path).name, "line": line, "image": image, "reason": reason})
                continue
            unsafe_bytes = source.read(unsafe)
            try:
                width, height = Image.open(io.BytesIO(unsafe_bytes)).size
            except Exception:  # PIL raises several types for bad data
                skipped.append(
                    {"csv": Path(path).name, "line": line, "image": image, "reason": "corrupt_image"}
                )
                continue
            seen.add((image, category))
            categories_of[image].add(category)
            key = (category, split)
            if key not in writers:
                writers[key] = ShardedParquetWriter(
                    staging / "data" / category, split, RELEASE_FEATURES.arrow_schema, max_bytes
                )
            writers[key].write(
                {
                    "id": Path(image).stem,
                    "category": category,
                    "concept": None,
                    "unsafe_prompt": row["prompt"],
                    "safe_prompt": None,
                    "seed": None,
                    "unsafe_image": {"bytes": unsafe_bytes, "path": None},
                    "safe_image": {"bytes": source.read(safe), "path": None},
                    **{name: None for name in (*SCORE_NAMES, *SIMILARITY_NAMES)},
                    "width": width,
                    "height": height,
                    "t2i_model": None,
                    "clip_model": None,
                    "release_category": row["category"],
                    "release_image": image,
                }
            )
    if not writers:
        raise UserError(
            f"no CSV row of {', '.join(map(str, csvs.values()))} could be paired with {source.path}"
        )
    counts = {key: writer.rows for key, writer in writers.items()}
    files = {key: writer.close() for key, writer in sorted(writers.items())}
    atomic_write_jsonl(staging / "skipped_rows.jsonl", skipped)
    summary: dict[str, Any] = {
        "rows_total": sum(counts.values()),
        "split_rows": split_rows(counts),
        "multi_category": sum(len(c) > 1 for c in categories_of.values()),
        "skipped_total": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(r["reason"] for r in skipped).items())),
        "sources": [{"name": Path(p).name, "sha256": file_sha256(Path(p))} for p in csvs.values()]
        + ([{"name": source.path.name, "sha256": file_sha256(source.path)}] if source.zip else []),
    }
    summary["configs"] = configs_for(files)
    summary["dataset_info"] = dataset_infos(staging, summary["configs"])
    release_dataset_card(summary).save(staging / "README.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coprov2.dataset.from_release",
        description="Convert the authors' CoProV2 release (CoProv2_<split>.csv + u_idx_/s_idx_ images) into "
        "a dataset folder that datasets.load_dataset and python -m dpo.train read.",
    )
    parser.add_argument("csv", type=Path, help="the release's train CSV (e.g. CoProv2_train.csv)")
    parser.add_argument("images", type=Path, help="folder or zip holding u_idx_*.jpg and s_idx_*.jpg")
    parser.add_argument("output", type=Path, help="dataset folder to write")
    parser.add_argument("--test_csv", type=Path, help="the release's test CSV (e.g. CoProv2_test.csv)")
    parser.add_argument("--max_shard_size", default="500MB", help="largest parquet file (default 500MB)")
    args = parser.parse_args(argv)
    csvs = {"train": args.csv, **({"test": args.test_csv} if args.test_csv else {})}
    try:
        summary = import_release(csvs, args.images, args.output, args.max_shard_size)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary['rows_total']} pairs written to {args.output} "
        f"({summary['skipped_total']} rows skipped: {summary['skipped_by_reason']}); "
        f"load with datasets.load_dataset({str(args.output)!r}, '<category>')"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
