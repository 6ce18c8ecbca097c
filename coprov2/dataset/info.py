"""``dataset_info`` for a dataset folder's card: rows and bytes per config and split."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def dataset_infos(folder: Path, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The card's ``dataset_info``: per config and split, the rows and bytes of its files.

    Besides being what the Hub shows, it is part of the cache key ``datasets`` derives for a folder whose
    README declares ``configs:``; the resolved files are not (datasets 5.2), so without it a rebuilt
    folder would load the previous build's cached rows.
    """
    infos = []
    for config in configs:
        splits = []
        for entry in config["data_files"]:
            paths = sorted(folder.glob(entry["path"]))
            rows = sum(
                pq.ParquetFile(p).metadata.num_rows if p.suffix == ".parquet" else _csv_rows(p) for p in paths
            )
            splits.append(
                {
                    "name": entry["split"],
                    "num_bytes": sum(p.stat().st_size for p in paths),
                    "num_examples": rows,
                }
            )
        size = sum(split["num_bytes"] for split in splits)
        infos.append(
            {
                "config_name": config["config_name"],
                "splits": splits,
                "download_size": size,
                "dataset_size": size,
            }
        )
    return infos


def _csv_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1
