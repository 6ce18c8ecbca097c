"""Preference pairs for a safety expert: caption = unsafe prompt, winner = safe image, loser = unsafe image.

One entry point reads both a CoProV2 dataset as ``load_dataset`` opens it (our folder or a Hub repo
id, any config) and the SafetyDPO release layout (``CoProv2_<split>.csv`` with ``prompt,image,category``
next to ``images/{u,s}_idx_<image>``, in :mod:`coprov2.dataset.release_csv`'s layouts). Images are decoded lazily, by the encoder, which names the
row of any image that does not decode.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.packaged_modules.parquet.parquet import ParquetConfig
from PIL import Image
from pyarrow.dataset import ParquetFragmentScanOptions

from coprov2.dataset.release_csv import read_release_csv
from coprov2.dataset.release_layout import from_release_category
from coprov2.errors import UserError
from coprov2.paths import check_hub_access
from coprov2.stage_io import file_sha256

logger = logging.getLogger(__name__)

COPROV2_COLUMNS = ("unsafe_prompt", "category", "unsafe_image", "safe_image")


@dataclass
class PreferencePairs:
    """Captions, categories and loaders of winner/loser image bytes; ``fingerprint`` hashes all of it."""

    captions: list[str]
    categories: list[str]
    winner_bytes: list[Callable[[], bytes]]
    loser_bytes: list[Callable[[], bytes]]
    source: str
    fingerprint: str
    #: Winner and loser bytes of every row in order, read as a stream (default: the loaders, in order).
    stream: Callable[[], Iterator[tuple[bytes, bytes]]] | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def indices(self, category: str) -> list[int]:
        """Rows of ``category`` (``all`` for every row); an unknown category lists the known ones."""
        if category == "all":
            return list(range(len(self)))
        chosen = [i for i, c in enumerate(self.categories) if c == from_release_category(category)]
        if not chosen:
            known = ", ".join(sorted(set(self.categories)))
            raise UserError(
                f"category {category!r} is not in {self.source}; known categories: {known} (or all)"
            )
        return chosen

    def iter_image_bytes(self) -> Iterator[tuple[bytes, bytes]]:
        """``(winner, loser)`` bytes of every row, in order, without holding more than one row."""
        if self.stream is not None:
            yield from self.stream()
            return
        for winner, loser in zip(self.winner_bytes, self.loser_bytes, strict=True):
            yield winner(), loser()

    def decode(self, index: int, which: str) -> Image.Image:
        """The winner (``safe``) or loser (``unsafe``) image of row ``index`` as RGB."""
        loader = self.winner_bytes[index] if which == "safe" else self.loser_bytes[index]
        return self.decode_bytes(loader(), index, which)

    def decode_bytes(self, payload: bytes, index: int, which: str) -> Image.Image:
        """``payload`` (row ``index``'s ``which`` image) as RGB; a bad image names its row and caption."""
        try:
            image = Image.open(io.BytesIO(payload))
            image.load()
        except Exception as error:  # PIL raises several types for bad data
            raise UserError(
                f"{self.source}, row {index} ({self.captions[index][:60]!r}): the {which} image does not decode: {error}"
            ) from error
        return image.convert("RGB")


def _fingerprint(captions: list[str], categories: list[str], keys: list[str]) -> str:
    digest = hashlib.sha256()
    for parts in zip(captions, categories, keys, strict=True):
        digest.update("\x1f".join(parts).encode() + b"\x1e")
    return digest.hexdigest()[:16]


def _release_csv(path: Path) -> PreferencePairs:
    """Pairs of a release-layout CSV (:mod:`coprov2.dataset.release_csv`), images beside it or in ``images/``.

    A prompts-only CSV (the release's test layout) falls back to the pickapic ``<split>.csv`` beside it,
    which our export writes with every pair of the split.
    """
    parsed = read_release_csv(path)
    if parsed.layout == "prompts":
        pickapic = path.with_name(f"{path.stem.removeprefix('CoProv2_')}.csv")
        if not pickapic.is_file():
            raise UserError(
                f"{path}: one unsafe prompt per row, no safe twin or images (the release's test layout): "
                "nothing to train on; give a CSV of u_idx_/s_idx_ rows"
            )
        parsed = read_release_csv(pickapic)
    if parsed.skipped:
        reasons = Counter(row["reason"] for row in parsed.skipped)
        logger.warning("%s: %d rows not used (%s)", path, len(parsed.skipped), dict(reasons))
    folder = path.parent

    def locate(name: str, line: int) -> Path:
        for candidate in (folder / name, folder / "images" / Path(name).name, folder / Path(name).name):
            if candidate.is_file():
                return candidate
        raise UserError(
            f"{parsed.path}:{line}: image {name} is missing (looked in {folder} and {folder / 'images'})"
        )

    captions, categories, keys, winners, losers = [], [], [], [], []
    for pair in parsed.pairs:
        safe, unsafe = locate(pair.safe_image, pair.line), locate(pair.unsafe_image, pair.line)
        captions.append(pair.unsafe_prompt)
        categories.append(from_release_category(pair.release_category))
        # content, not size: a file replaced in place must change the cache key
        keys.append(f"{pair.id}:{file_sha256(safe)}:{file_sha256(unsafe)}")
        winners.append(safe.read_bytes)
        losers.append(unsafe.read_bytes)
    return PreferencePairs(
        captions, categories, winners, losers, str(parsed.path), _fingerprint(captions, categories, keys)
    )


def _local_files_digest(builder: datasets.DatasetBuilder, split: str) -> str:
    """sha256 of the split's local data files: a file rewritten in place changes the cache key.

    (Hub files are addressed by their commit in the resolved paths, which the key already holds.)
    """
    data_files = builder.config.data_files or {}
    local = sorted(Path(f) for f in data_files.get(split, []) if Path(f).is_file())
    return ",".join(file_sha256(path) for path in local)


def stream_columns(
    name: str, config: str | None, split: str, columns: list[str], builder: datasets.DatasetBuilder
) -> datasets.IterableDataset:
    """The ``columns`` of a dataset split, streamed: of a parquet dataset only those columns are read, without
    pre-buffering (arrow's default reads ahead whole column chunks, which made the peak memory grow with the size of
    each parquet file); other builders read whole rows and the columns are picked after. ``builder``: the dataset's,
    resolved once by the caller (resolving lists its data files, on the Hub too)."""
    if not isinstance(builder.config, ParquetConfig):
        return datasets.load_dataset(name, config, split=split, streaming=True).select_columns(columns)
    return datasets.load_dataset(
        name, config, split=split, streaming=True, columns=columns,
        fragment_scan_options=ParquetFragmentScanOptions(pre_buffer=False),
    )  # fmt: skip


def _hf_dataset(name: str, config: str | None, split: str) -> PreferencePairs:
    """Pairs of anything ``load_dataset`` opens, read in streaming mode only.

    Streaming reads the parquet files themselves, a few rows at a time: no full Arrow cache copy (whose
    mapped pages would make the RSS grow with the dataset), and no stale cache after a file is
    rewritten in place (``datasets`` keys a README-configs folder's cache on its YAML, not its files).
    """

    builder = datasets.load_dataset_builder(name, config)

    def rows(columns: list[str]) -> datasets.IterableDataset:
        return stream_columns(name, config, split, columns, builder)

    features = datasets.load_dataset(name, config, split=split, streaming=True).features or {}
    missing = set(COPROV2_COLUMNS) - set(features)
    if missing:
        raise UserError(
            f"{name} ({split}): not a CoProV2 dataset, columns {sorted(missing)} are missing; "
            f"it has {', '.join(features)}"
        )
    first = next(iter(rows(["unsafe_image"]).cast_column("unsafe_image", datasets.Image(decode=False))), None)
    if first is not None and first["unsafe_image"] is None:
        raise UserError(
            f"{name} ({split}): prompts without images (an imported release's test prompts): no pairs to "
            "train on; pick another --split"
        )
    text_columns = ["unsafe_prompt", "category", *(["id"] if "id" in features else [])]
    text = list(rows(text_columns))
    captions, categories = [r["unsafe_prompt"] for r in text], [r["category"] for r in text]
    keys = [r.get("id", str(i)) for i, r in enumerate(text)]

    def stream() -> Iterator[tuple[bytes, bytes]]:
        images = rows(["safe_image", "unsafe_image"])
        images = images.cast_column("safe_image", datasets.Image(decode=False))
        images = images.cast_column("unsafe_image", datasets.Image(decode=False))
        count = 0
        for row in images:
            count += 1
            yield tuple(
                row[c]["bytes"] or Path(row[c]["path"]).read_bytes() for c in ("safe_image", "unsafe_image")
            )
        if count != len(text):
            raise RuntimeError(f"{name} ({split}): streamed {count} image rows, {len(text)} text rows")

    def loader(index: int, position: int) -> Callable[[], bytes]:
        return lambda: next(itertools.islice(stream(), index, None))[position]

    digest = _local_files_digest(builder, split)
    return PreferencePairs(
        captions,
        categories,
        [loader(i, 0) for i in range(len(text))],
        [loader(i, 1) for i in range(len(text))],
        f"{name} ({config or 'default'}, {split})",
        _fingerprint(captions, categories, [f"{k}:{digest}" for k in keys]),
        stream,
    )


def load_preference_pairs(dataset: str, config: str | None = None, split: str = "train") -> PreferencePairs:
    """Pairs from ``dataset``: a release CSV, a folder holding ``CoProv2_<split>.csv``, or anything ``load_dataset`` opens."""
    path = Path(dataset)
    if path.suffix == ".csv" and path.is_file():
        pairs = _release_csv(path)
    elif (path / f"CoProv2_{split}.csv").is_file():
        pairs = _release_csv(path / f"CoProv2_{split}.csv")
    else:
        if not path.exists():
            check_hub_access(dataset, "--dataset", repo_type="dataset", filename="README.md")
        try:
            pairs = _hf_dataset(dataset, config, split)
        except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
            raise UserError(
                f"--dataset {dataset}: cannot open it ({type(error).__name__}: {error})"
            ) from None
    if not len(pairs):
        raise UserError(f"{pairs.source} has no rows: pick another --split or --dataset_config")
    return pairs
