"""Export a CoProV2 dataset to the authors' release layout, so their own scripts can read our data.

The release (github.com/Visualignment/SafetyDPO, ``data/``) has two CSVs under one header
``prompt,image,category`` (read by :mod:`coprov2.dataset.release_csv`): the train CSV lists every *image*
in its own row, ``u_idx_0000000_0.jpg`` with the unsafe prompt and ``s_idx_0000000_0.jpg`` with the safe
prompt; the test CSV lists one unsafe prompt per row, ``image`` = ``0000000_0.jpg``. Categories use the
release's spellings (``Harrasment``, ``self-harm``, ``sexual``...). Its ``train.py`` reads neither: it reads
``caption, jpg_0, jpg_1, label_0`` and, when the dataset path contains ``pickapic_formatted``, opens
``jpg_0``/``jpg_1`` as paths relative to that folder; ``label_0 == 1`` means ``jpg_0`` is preferred. So the
folder written here holds:

- ``images/{u,s}_idx_<index>_0.jpg``; ``CoProv2_train.csv`` (and any split but test) in the train layout,
  ``CoProv2_test.csv`` in the test layout;
- ``train.csv``/``test.csv`` (``caption`` = unsafe prompt, ``jpg_0`` = safe image, ``jpg_1`` = unsafe
  image, ``label_0`` = 1, plus ``category`` and ``safe_caption``, which ``train.py`` ignores) declared in
  ``README.md``'s ``configs:``, so that ``accelerate launch train.py --dataset_name <this folder>`` trains on
  it when the folder's name contains ``pickapic_formatted`` (the default name does). They keep every
  split's pairs whole, test included: ``from_release CoProv2_train.csv images OUT --test_csv test.csv``
  gives the dataset back.

Indices run over train then test, so every image name is unique in ``images/``.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import yaml
from PIL import Image
from tqdm.auto import tqdm

from coprov2.cli import ArgumentParser
from coprov2.dataset.info import dataset_infos
from coprov2.dataset.release_csv import PICKAPIC_COLUMNS, PROMPT_COLUMNS
from coprov2.errors import UserError, run_cli
from coprov2.stage_io import staging_folder, swap_in

RELEASE_FOLDER_NAME = "release_pickapic_formatted"
RELEASE_CATEGORY = {
    "hate": "Hate",
    "harassment": "Harrasment",
    "violence": "Violence",
    "self-harm": "self-harm",
    "sexual": "sexual",
    "shocking": "Shocking",
    "illegal-activity": "Illegal Activity",
}
_FROM_RELEASE = {spelling.lower(): category for category, spelling in RELEASE_CATEGORY.items()}
PAIR_COLUMNS = (*PICKAPIC_COLUMNS, "category", "safe_caption")
JPEG_QUALITY = 95


def to_release_category(category: str) -> str:
    """Our category id in the release's spelling (ids outside the seven I2P ones are kept)."""
    return RELEASE_CATEGORY.get(category, category)


def from_release_category(spelling: str) -> str:
    """The release's category spelling back to our id (case-insensitive; unknown names are kept)."""
    return _FROM_RELEASE.get(spelling.strip().lower(), spelling.strip())


def image_names(index: int) -> tuple[str, str, str]:
    """``(pair name, unsafe file, safe file)`` for the pair at ``index``, as the release names them."""
    pair = f"{index:07d}_0.jpg"
    return pair, f"u_idx_{pair}", f"s_idx_{pair}"


def _jpeg(image: Any) -> bytes:
    if isinstance(image, Mapping):
        image = Image.open(io.BytesIO(image["bytes"]))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


_README = """---
{yaml}---
# CoProV2 in the SafetyDPO release layout

Content warning: the prompts and images depict harmful content (hate, harassment, violence,
self-harm, sexual content, shocking images, illegal activity). For safety research only.

`CoProv2_train.csv` (`prompt,image,category`, a row per image: `u_idx_*` with the unsafe prompt,
`s_idx_*` with the safe one) and `CoProv2_test.csv` (a row per unsafe prompt) with `images/` are the
release's layout. `<split>.csv` (`caption,jpg_0,jpg_1,label_0`) is what the release's `train.py`
reads: `jpg_0` is the preferred (safe) image, `jpg_1` the unsafe one, `label_0 = 1`; its `safe_caption`
column holds the safe prompt.
"""


def export_release_layout(
    dataset: datasets.DatasetDict | datasets.IterableDatasetDict | str | Path, output: str | Path
) -> dict[str, int]:
    """Write the release layout of ``dataset`` (a DatasetDict or anything ``load_dataset`` opens) to ``output``.

    Returns the number of pairs per split. The folder is written beside ``output`` and swapped in whole.
    A name is opened in streaming mode: rows go from the parquet files to the JPEGs one at a time,
    without the full Arrow cache copy (and its mapped pages) that a plain ``load_dataset`` makes.
    """
    if not isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        dataset = datasets.load_dataset(str(dataset), streaming=True)
    missing = {"unsafe_prompt", "category", "unsafe_image", "safe_image"} - set(
        next(iter(dataset.values())).features
    )
    if missing:
        raise UserError(f"not a CoProV2 dataset: columns {sorted(missing)} are missing")
    target = Path(output)
    staging = staging_folder(target)
    (staging / "images").mkdir()
    counts: dict[str, int] = {}
    index = 0
    for split in [s for s in ("train", "test") if s in dataset] + [
        s for s in dataset if s not in ("train", "test")
    ]:
        rows = dataset[split].cast_column("unsafe_image", datasets.Image(decode=False))
        rows = rows.cast_column("safe_image", datasets.Image(decode=False))
        prompts, pairs, first = [], [], index
        for row in tqdm(rows, desc=f"release layout ({split})", unit="pair"):
            pair, unsafe_file, safe_file = image_names(index)
            if row["unsafe_image"] is None:  # a prompt without images (an imported release's test split)
                prompts.append(
                    {
                        "prompt": row["unsafe_prompt"],
                        "image": pair,
                        "category": to_release_category(row["category"]),
                    }
                )
                index += 1
                continue
            (staging / "images" / unsafe_file).write_bytes(_jpeg(row["unsafe_image"]))
            (staging / "images" / safe_file).write_bytes(_jpeg(row["safe_image"]))
            category = to_release_category(row["category"])
            if split == "test":  # the release's test layout: a row per unsafe prompt
                prompts.append({"prompt": row["unsafe_prompt"], "image": pair, "category": category})
            else:  # its train layout: a row per image, each with its own prompt
                prompts.append({"prompt": row["unsafe_prompt"], "image": unsafe_file, "category": category})
                prompts.append(
                    {"prompt": row.get("safe_prompt") or "", "image": safe_file, "category": category}
                )
            pairs.append(
                {
                    "caption": row["unsafe_prompt"],
                    "jpg_0": f"images/{safe_file}",
                    "jpg_1": f"images/{unsafe_file}",
                    "label_0": 1,
                    "category": category,
                    "safe_caption": row.get("safe_prompt") or "",
                }
            )
            index += 1
        _write_csv(staging / f"CoProv2_{split}.csv", PROMPT_COLUMNS, prompts)
        _write_csv(staging / f"{split}.csv", PAIR_COLUMNS, pairs)
        counts[split] = index - first
    configs = [{"config_name": "default", "data_files": [{"split": s, "path": f"{s}.csv"} for s in counts]}]
    metadata = {"configs": configs, "dataset_info": dataset_infos(staging, configs)}
    (staging / "README.md").write_text(
        _README.format(yaml=yaml.safe_dump(metadata, sort_keys=False)), encoding="utf-8"
    )
    swap_in(staging, target)
    return counts


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m coprov2.dataset.release_layout",
        description="Export a CoProV2 dataset (a folder or Hub repo id that load_dataset opens) to the "
        "SafetyDPO release layout: images/{u,s}_idx_*.jpg, CoProv2_<split>.csv and the <split>.csv "
        "pairs the release's train.py reads.",
    )
    parser.add_argument("dataset", help="dataset folder or Hub repo id")
    parser.add_argument(
        "output",
        help=f"output folder; keep 'pickapic_formatted' in its name for train.py (e.g. {RELEASE_FOLDER_NAME})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = make_parser().parse_args(argv)
        counts = export_release_layout(args.dataset, args.output)
        print(f"wrote {counts} pairs to {args.output}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
