"""Parquet files of bounded size, filled row group by row group: the Hub's ``<split>-00000-of-000NN`` shards.

Why by hand: ``Dataset.to_parquet``/``push_to_hub`` shard a dataset that is already in an Arrow
table (for an image dataset, all its images in memory or in a full cache copy); here the rows come
as a stream and at most one row group per file is held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: Flush a row group at this many buffered bytes (images are most of them) ...
ROW_GROUP_BYTES = 16 * 1024 * 1024
#: ... or rows, the row-group size ``datasets`` uses for image datasets.
ROW_GROUP_ROWS = 100
#: Parquet's own bytes around the values (page headers, statistics, footer) stay well under this.
_OVERHEAD = 64 * 1024


def row_bytes(row: Mapping[str, Any]) -> int:
    """An upper bound of a row's value bytes (images are stored as they are: PNG does not compress)."""
    total = 0
    for value in row.values():
        if isinstance(value, Mapping):
            total += row_bytes(value)
        elif isinstance(value, bytes | str):
            total += len(value) if isinstance(value, bytes) else len(value.encode())
        else:
            total += 8
    return total


class ShardedParquetWriter:
    """Writes ``<folder>/<prefix>-<k>-of-<n>.parquet`` files of at most ``max_bytes`` each.

    A row that alone exceeds ``max_bytes`` gets a file of its own. The final names are given by
    :meth:`close`, once the number of files is known.
    """

    def __init__(self, folder: Path, prefix: str, schema: pa.Schema, max_bytes: int) -> None:
        self.folder, self.prefix, self.schema, self.max_bytes = folder, prefix, schema, max_bytes
        self.files: list[Path] = []
        self.rows = 0
        self._sink: pa.OSFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[Mapping[str, Any]] = []
        self._buffered = 0

    def _written(self) -> int:
        return self._sink.tell() if self._sink is not None else 0

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f".{self.prefix}-{len(self.files):05d}.parquet.partial"
        self.files.append(path)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pq.ParquetWriter(self._sink, self.schema)

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
        self._writer = self._sink = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._buffer, self._buffered = [], 0

    def write(self, row: Mapping[str, Any]) -> None:
        size = row_bytes(row)
        pending = self._written() + self._buffered + size + _OVERHEAD
        if pending > self.max_bytes and (self._buffer or self._written()):
            self._flush()
            self._close_file()
        self._buffer.append(row)
        self._buffered += size
        self.rows += 1
        if self._buffered >= ROW_GROUP_BYTES or len(self._buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> list[Path]:
        """Flush, close, and rename the files to ``<prefix>-<k>-of-<n>.parquet``; returns them."""
        self._flush()
        self._close_file()
        final = []
        for k, path in enumerate(self.files):
            target = self.folder / f"{self.prefix}-{k:05d}-of-{len(self.files):05d}.parquet"
            os.replace(path, target)
            final.append(target)
        return final
