"""The authors' CoProV2 release as a dataset of this toolkit: ``load_dataset(OUT, "violence")`` and
``python -m dpo.train --dataset OUT`` then work on the published data.

Inputs, in the release's own layouts (read by :mod:`coprov2.dataset.release_csv`):

- the train CSV (``data/CoProv2_train.csv``, one row per image: ``u_idx_<id>`` with the unsafe prompt,
  ``s_idx_<id>`` with the safe one) or the pickapic CSV the release's ``train.py`` reads
  (``caption,jpg_0,jpg_1,label_0``); every pair gets its two images from the folder or zip of the
  dataset (``Visualignment/CoProv2-SD15`` or ``-SDXL``, unzipped or not), embedded as they are;
- the test CSV (``data/CoProv2_test.csv``, one unsafe prompt per row, no safe twin, no images): its rows
  become the ``test`` split with the prompt columns filled and the image columns empty, which
  ``python -m evaluation --prompts OUT`` reads as a prompt set. (A test CSV with pairs, in either pair
  layout, gives pairs, as our own export's ``test.csv`` does.)

Quirks of the release, each handled and counted in ``skipped_rows.jsonl`` (CSV line and reason) and the
card: a pair listed under several categories is kept in each (``multi_category``); the misspelled
``Harrasment`` and other spellings map to our config names (``release_category`` keeps them); a repeated
row, an id with one of its two rows missing (a cut CSV), a pair with an image missing (a partial download,
``missing_unsafe_image``, ``missing_safe_image``, ``missing_images``) or unreadable (``corrupt_image``).
"""

from __future__ import annotations

import io
import re
import shutil
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from datasets import Features, Value
from datasets.utils.py_utils import convert_file_size_to_int
from PIL import Image
from tqdm.auto import tqdm

from cards.dataset_card import release_dataset_card
from coprov2.cli import ArgumentParser
from coprov2.dataset.export import FEATURES, SIMILARITY_NAMES, configs_for, split_rows
from coprov2.dataset.info import dataset_infos
from coprov2.dataset.parquet_writer import ShardedParquetWriter
from coprov2.dataset.release_csv import ReleasePair, read_release_csv
from coprov2.dataset.release_layout import from_release_category
from coprov2.errors import UserError, run_cli
from coprov2.gate.clip_scores import SCORE_NAMES
from coprov2.stage_io import atomic_write_jsonl, file_sha256, staging_folder, swap_in

#: How the card names each CSV layout (:func:`coprov2.dataset.release_csv.layout_of`).
LAYOUT_NAMES = {
    "images": "pairs (a u_idx_ and an s_idx_ row per pair, both prompts)",
    "prompts": "prompts only (one unsafe prompt per row, no safe twin, no images)",
    "pickapic": "pairs (caption, jpg_0, jpg_1, label_0)",
}
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
            self.names = {p.name: p for p in sorted(path.rglob("*")) if p.is_file()}
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


def _row(
    pair_id: str, category: str, unsafe_prompt: str, safe_prompt: str | None, release_category: str,
    release_image: str, images: tuple[bytes, bytes, tuple[int, int]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    unsafe, safe, (width, height) = images or (None, None, (None, None))
    return {
        "id": pair_id,
        "category": category,
        "concept": None,
        "unsafe_prompt": unsafe_prompt,
        "safe_prompt": safe_prompt,
        "seed": None,
        "unsafe_image": {"bytes": unsafe, "path": None} if unsafe else None,
        "safe_image": {"bytes": safe, "path": None} if safe else None,
        **{name: None for name in (*SCORE_NAMES, *SIMILARITY_NAMES)},
        "width": width,
        "height": height,
        "t2i_model": None,
        "clip_model": None,
        "release_category": release_category,
        "release_image": release_image,
    }


def _pair_images(pair: ReleasePair, source: ImageSource) -> tuple[bytes, bytes, tuple[int, int]] | str:
    """Both images' bytes and the unsafe one's size, or the reason the pair cannot be used."""
    unsafe, safe = Path(pair.unsafe_image).name, Path(pair.safe_image).name
    if unsafe not in source and safe not in source:
        return "missing_images"
    if unsafe not in source:
        return "missing_unsafe_image"
    if safe not in source:
        return "missing_safe_image"
    payloads = source.read(unsafe), source.read(safe)
    try:
        sizes = [Image.open(io.BytesIO(payload)).size for payload in payloads]
    except Exception:  # PIL raises several types for bad data
        return "corrupt_image"
    return payloads[0], payloads[1], sizes[0]


def _convert(csvs: dict[str, Path], source: ImageSource, staging: Path, max_bytes: int) -> dict[str, Any]:
    writers: dict[tuple[str, str], ShardedParquetWriter] = {}
    skipped: list[dict[str, Any]] = []
    categories_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    layouts: dict[str, str] = {}
    pairs_written = 0

    def write(split: str, row: dict[str, Any]) -> None:
        key = (row["category"], split)
        if key not in writers:
            writers[key] = ShardedParquetWriter(
                staging / "data" / row["category"], split, RELEASE_FEATURES.arrow_schema, max_bytes
            )
        writers[key].write(row)

    for split, path in csvs.items():
        parsed = read_release_csv(path)
        layouts[split] = parsed.layout
        if split == "train" and parsed.layout == "prompts":
            raise UserError(
                f"{path}: one unsafe prompt per row, no safe twin and no u_idx_/s_idx_ images (the release's "
                "test layout); pass it as --test_csv, and the train CSV (u_idx_/s_idx_ rows) first"
            )
        skipped += parsed.skipped
        for prompt in tqdm(parsed.prompts, desc=f"{Path(path).name} (prompts)", unit="row", disable=None):
            category = config_name(prompt.release_category)
            write(
                split, _row(prompt.id, category, prompt.prompt, None, prompt.release_category, prompt.image)
            )
        for pair in tqdm(parsed.pairs, desc=f"{Path(path).name} (pairs)", unit="pair", disable=None):
            images = _pair_images(pair, source)
            if isinstance(images, str):
                skipped.append(
                    {"csv": Path(path).name, "line": pair.line, "image": pair.id, "reason": images}
                )
                continue
            category = config_name(pair.release_category)
            categories_of[(split, pair.id)].add(category)
            pairs_written += 1
            write(split, _row(pair.id, category, pair.unsafe_prompt, pair.safe_prompt, pair.release_category,
                              Path(pair.unsafe_image).name, images))  # fmt: skip
    if not pairs_written:
        raise UserError(
            f"no pair of {', '.join(map(str, csvs.values()))} could be made with the images of {source.path}: "
            "see skipped_rows reasons " + str(dict(Counter(r["reason"] for r in skipped)))
        )
    counts = {key: writer.rows for key, writer in writers.items()}
    files = {key: writer.close() for key, writer in sorted(writers.items())}
    atomic_write_jsonl(staging / "skipped_rows.jsonl", sorted(skipped, key=lambda r: (r["csv"], r["line"])))
    summary: dict[str, Any] = {
        "rows_total": sum(counts.values()),
        "split_rows": split_rows(counts),
        "layouts": {split: LAYOUT_NAMES[layout] for split, layout in layouts.items()},
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


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m coprov2.dataset.from_release",
        description="Convert the authors' CoProV2 release (data/CoProv2_train.csv with u_idx_/s_idx_ rows, "
        "data/CoProv2_test.csv with test prompts, and the images of the CoProv2-SD15/-SDXL dataset) into a "
        "dataset folder that datasets.load_dataset, python -m dpo.train and python -m evaluation read.",
    )
    parser.add_argument(
        "csv", type=Path,
        help="the train CSV: the release's CoProv2_train.csv, or a pickapic CSV (caption,jpg_0,jpg_1,label_0)",
    )  # fmt: skip
    parser.add_argument("images", type=Path, help="folder or zip holding the u_idx_*/s_idx_* images")
    parser.add_argument("output", type=Path, help="dataset folder to write")
    parser.add_argument(
        "--test_csv", type=Path,
        help="the test CSV: the release's CoProv2_test.csv (prompts only) or a CSV of pairs",
    )  # fmt: skip
    parser.add_argument("--max_shard_size", default="500MB", help="largest parquet file (default 500MB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = make_parser().parse_args(argv)
        csvs = {"train": args.csv, **({"test": args.test_csv} if args.test_csv else {})}
        summary = import_release(csvs, args.images, args.output, args.max_shard_size)
        print(
            f"{summary['rows_total']} rows written to {args.output} "
            f"({summary['skipped_total']} CSV rows skipped: {summary['skipped_by_reason']}); "
            f"load with datasets.load_dataset({str(args.output)!r}, '<category>')"
        )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
