"""The SafetyDPO release's CSV layouts, read into pairs or prompts (one reader for the importer and ``dpo``).

The release (github.com/Visualignment/SafetyDPO, ``data/``) has two CSV layouts under the same header
``prompt,image,category``, told apart by the ``image`` column:

- **image rows** (``CoProv2_train.csv``, 32,086 rows): one row per *image*; ``u_idx_0000000_0.jpg`` carries
  the unsafe prompt, ``s_idx_0000000_0.jpg`` the safe prompt of the same pair. A pair listed under several
  categories repeats its two rows per category, not always adjacent (``u``/Hate, ``u``/sexual,
  ``s``/Hate, ``s``/sexual);
- **prompt rows** (``CoProv2_test.csv``, 8,000 rows): one row per unsafe prompt, ``image`` = ``0000000_0.jpg``,
  no safe twin and no images: an evaluation prompt set. Its ids restart at 0, so they name *other*
  pairs' train images: they are never paired with image files.

The release's ``train.py`` reads a third layout, **pickapic** (``caption,jpg_0,jpg_1,label_0``: ``jpg_0``
and ``jpg_1`` are image paths, ``label_0 = 1`` when ``jpg_0`` is preferred), which may sit beside a
downloaded dataset; our own export adds ``category`` and ``safe_caption`` columns to it.

A row that cannot be used is skipped and reported with its CSV line and one of :data:`SKIP_REASONS`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coprov2.errors import UserError

PROMPT_COLUMNS = ("prompt", "image", "category")
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
#: Why a CSV row was not used (the image-file reasons are the importer's, see ``from_release``).
SKIP_REASONS = {
    "empty_prompt": "the prompt is empty",
    "duplicate_row": "the same image and category again (the first row is kept)",
    "missing_safe_row": "an s_idx_ row without its u_idx_ twin's safe row (a cut CSV)",
    "missing_unsafe_row": "a u_idx_ row's pair has no unsafe row (a cut CSV)",
    "bad_image_name": "the image column is not u_idx_<id>, s_idx_<id> (or <id> in a prompts CSV)",
    "no_preference": "a pickapic row whose label_0 is neither 0 nor 1 (a tie)",
}
_IMAGE_ROW = re.compile(r"(?P<kind>[us])_idx_(?P<id>.+)")
#: Images per pair, unsafe first: the release's file prefixes.
UNSAFE_PREFIX, SAFE_PREFIX = "u_idx_", "s_idx_"


@dataclass
class ReleasePair:
    """One pair: both prompts (the safe one may be unknown), its category as spelled, its two image names."""

    id: str
    release_category: str
    unsafe_prompt: str
    safe_prompt: str | None
    unsafe_image: str
    safe_image: str
    line: int


@dataclass
class ReleasePrompt:
    """One row of a prompts-only CSV (the release's test layout)."""

    id: str
    release_category: str
    prompt: str
    image: str
    line: int


@dataclass
class ReleaseCSV:
    """What one CSV holds: its layout, its pairs or its prompts, and the rows skipped with their reasons."""

    path: Path
    layout: str  # "images", "prompts" or "pickapic"
    pairs: list[ReleasePair] = field(default_factory=list)
    prompts: list[ReleasePrompt] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, line: int, image: str, reason: str) -> None:
        self.skipped.append({"csv": self.path.name, "line": line, "image": image, "reason": reason})


def _rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header and ``(line, row)`` pairs; ``utf-8-sig`` because spreadsheet tools prepend a BOM."""
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle)
    columns = list(reader.fieldnames or [])

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with handle:
            start = reader.line_num + 1  # the row's first physical line: a quoted newline spans several
            for row in reader:
                yield start, {k: (v or "") for k, v in row.items() if k is not None}
                start = reader.line_num + 1

    return columns, rows()


def layout_of(path: Path) -> str:
    """``images``, ``prompts`` or ``pickapic``, from the header and the first row; a UserError otherwise."""
    columns, rows = _rows(path)
    if set(PICKAPIC_COLUMNS) <= set(columns):
        rows.close()
        return "pickapic"
    if not set(PROMPT_COLUMNS) <= set(columns):
        rows.close()
        raise UserError(
            f"{path}: not a CoProV2 release CSV, columns {sorted(set(PROMPT_COLUMNS) - set(columns))} are "
            f"missing (it has {columns}); expected {','.join(PROMPT_COLUMNS)} or {','.join(PICKAPIC_COLUMNS)}"
        )
    first = next(rows, None)
    rows.close()
    if first is None:
        raise UserError(f"{path}: the CSV has no rows")
    return "images" if _IMAGE_ROW.fullmatch(first[1]["image"].strip()) else "prompts"


def read_release_csv(path: str | Path) -> ReleaseCSV:
    """Read ``path`` in whichever layout it is; pairs keep the order of their first row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such CSV file")
    result = ReleaseCSV(path, layout_of(path))
    {"images": _image_rows, "prompts": _prompt_rows, "pickapic": _pickapic_rows}[result.layout](result)
    return result


def _image_rows(result: ReleaseCSV) -> None:
    # (id, category) -> {"u"|"s": (line, prompt, file)}: both rows of a pair are needed before it is whole,
    # and the release does not always list them next to each other.
    halves: dict[tuple[str, str], dict[str, tuple[int, str, str]]] = {}
    for line, row in _rows(result.path)[1]:
        image, category, prompt = row["image"].strip(), row["category"].strip(), row["prompt"]
        match = _IMAGE_ROW.fullmatch(image)
        if not match:
            result.skip(line, image, "bad_image_name")
            continue
        if not prompt.strip():
            result.skip(line, image, "empty_prompt")
            continue
        pair = halves.setdefault((match["id"], category), {})
        if match["kind"] in pair:
            result.skip(line, image, "duplicate_row")
            continue
        pair[match["kind"]] = (line, prompt, image)
    for (pair_id, category), half in halves.items():
        if "u" not in half:
            result.skip(half["s"][0], half["s"][2], "missing_unsafe_row")
        elif "s" not in half:
            result.skip(half["u"][0], half["u"][2], "missing_safe_row")
        else:
            (u_line, unsafe, u_file), (s_line, safe, s_file) = half["u"], half["s"]
            result.pairs.append(
                ReleasePair(Path(pair_id).stem, category, unsafe, safe, u_file, s_file, min(u_line, s_line))
            )
    result.pairs.sort(key=lambda p: p.line)
    result.skipped.sort(key=lambda r: r["line"])


def _prompt_rows(result: ReleaseCSV) -> None:
    seen: set[tuple[str, str]] = set()
    for line, row in _rows(result.path)[1]:
        image, category, prompt = row["image"].strip(), row["category"].strip(), row["prompt"]
        if not image or _IMAGE_ROW.fullmatch(image):
            result.skip(line, image, "bad_image_name")
        elif not prompt.strip():
            result.skip(line, image, "empty_prompt")
        elif (image, category) in seen:
            result.skip(line, image, "duplicate_row")
        else:
            seen.add((image, category))
            result.prompts.append(ReleasePrompt(Path(image).stem, category, prompt, image, line))


def _pickapic_rows(result: ReleaseCSV) -> None:
    seen: set[tuple[str, str]] = set()
    for line, row in _rows(result.path)[1]:
        caption, category = row["caption"], row.get("category", "").strip() or "uncategorized"
        label = row["label_0"].strip()
        if label not in ("0", "1", "0.0", "1.0"):
            result.skip(line, row["jpg_0"], "no_preference")
            continue
        safe, unsafe = (row["jpg_0"], row["jpg_1"]) if float(label) == 1 else (row["jpg_1"], row["jpg_0"])
        if not caption.strip():
            result.skip(line, unsafe, "empty_prompt")
        elif (unsafe, category) in seen:
            result.skip(line, unsafe, "duplicate_row")
        else:
            seen.add((unsafe, category))
            match = _IMAGE_ROW.fullmatch(Path(unsafe).name)
            pair_id = Path(match["id"] if match else Path(unsafe).name).stem
            result.pairs.append(
                ReleasePair(pair_id, category, caption, row.get("safe_caption") or None, unsafe, safe, line)
            )
