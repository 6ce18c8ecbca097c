"""Preference pairs for a safety expert: caption = unsafe prompt, winner = safe image, loser = unsafe image.

One entry point reads both a CoProV2 dataset as ``load_dataset`` opens it (our folder or a Hub repo
id, any config) and the SafetyDPO release layout (``CoProv2_<split>.csv`` with ``prompt,image,category``
next to ``images/{u,s}_idx_<image>``). Images are decoded lazily, by the encoder, which names the
row of any image that does not decode.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from coprov2.dataset.release_layout import from_release_category

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
            raise ValueError(
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
            raise ValueError(
                f"{self.source}, row {index} ({self.captions[index][:60]!r}): the {which} image does not decode: {error}"
            ) from error
        return image.convert("RGB")


def _fingerprint(captions: list[str], categories: list[str], keys: list[str]) -> str:
    digest = hashlib.sha256()
    for parts in zip(captions, categories, keys, strict=True):
        digest.update("\x1f".join(parts).encode() + b"\x1e")
    return digest.hexdigest()[:16]


def _release_csv(path: Path) -> PreferencePairs:
    folder = path.parent
    images = folder / "images" if (folder / "images").is_dir() else folder
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"prompt", "image", "category"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: not a release CSV, columns {sorted(missing)} are missing (need prompt,image,category)"
            )
        rows = list(reader)
    captions, categories, keys, winners, losers = [], [], [], [], []
    for line, row in enumerate(rows, start=2):
        safe, unsafe = images / f"s_idx_{row['image']}", images / f"u_idx_{row['image']}"
        for image in (safe, unsafe):
            if not image.is_file():
                raise FileNotFoundError(f"{path}:{line}: image {image} is missing")
        captions.append(row["prompt"])
        categories.append(from_release_category(row["category"]))
        keys.append(f"{row['image']}:{safe.stat().st_size}:{unsafe.stat().st_size}")
        winners.append(safe.read_bytes)
        losers.append(unsafe.read_bytes)
    return PreferencePairs(
        captions, categories, winners, losers, str(path), _fingerprint(captions, categories, keys)
    )


def _hf_dataset(name: str, config: str | None, split: str) -> PreferencePairs:
    import datasets

    dataset = datasets.load_dataset(name, config, split=split)
    missing = set(COPROV2_COLUMNS) - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"{name} ({split}): not a CoProV2 dataset, columns {sorted(missing)} are missing; "
            f"it has {', '.join(dataset.column_names)}"
        )
    dataset = dataset.cast_column("unsafe_image", datasets.Image(decode=False))
    dataset = dataset.cast_column("safe_image", datasets.Image(decode=False))
    images = dataset.select_columns(["unsafe_image", "safe_image"])

    def loader(index: int, column: str) -> Callable[[], bytes]:
        return lambda: images[index][column]["bytes"] or Path(images[index][column]["path"]).read_bytes()

    def stream() -> Iterator[tuple[bytes, bytes]]:
        # Streaming reads the parquet files row group by row group; iterating the Arrow cache instead
        # would map every image page into this process, so its RSS would grow with the dataset.
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
        rows = rows.select_columns(["safe_image", "unsafe_image"])
        rows = rows.cast_column("safe_image", datasets.Image(decode=False))
        rows = rows.cast_column("unsafe_image", datasets.Image(decode=False))
        count = 0
        for row in rows:
            count += 1
            yield tuple(
                row[c]["bytes"] or Path(row[c]["path"]).read_bytes() for c in ("safe_image", "unsafe_image")
            )
        if count != len(dataset):
            raise RuntimeError(f"{name} ({split}): streamed {count} rows, the dataset has {len(dataset)}")

    captions, categories = dataset["unsafe_prompt"], dataset["category"]
    keys = dataset["id"] if "id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    return PreferencePairs(
        captions,
        categories,
        [loader(i, "safe_image") for i in range(len(dataset))],
        [loader(i, "unsafe_image") for i in range(len(dataset))],
        f"{name} ({config or 'default'}, {split})",
        _fingerprint(captions, categories, [f"{k}:{dataset._fingerprint}" for k in keys]),
        stream,
    )


def load_preference_pairs(dataset: str, config: str | None = None, split: str = "train") -> PreferencePairs:
    """Pairs from ``dataset``: a release CSV, a folder holding ``CoProv2_<split>.csv``, or anything ``load_dataset`` opens."""
    path = Path(dataset)
    if path.suffix == ".csv" and path.is_file():
        return _release_csv(path)
    if (path / f"CoProv2_{split}.csv").is_file():
        return _release_csv(path / f"CoProv2_{split}.csv")
    return _hf_dataset(dataset, config, split)
