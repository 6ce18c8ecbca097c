"""clip-retrieval's embedding folder layout, read and written here (clip-retrieval itself is not a
dependency: it pins numpy<2 and pyarrow<16, which cannot sit beside datasets).

    <folder>/img_emb/img_emb_<k>.npy          float16, L2-normalized, one row per image
    <folder>/text_emb/text_emb_<k>.npy        float16, L2-normalized, one row per caption (optional)
    <folder>/metadata/metadata_<k>.parquet    image_path (and caption), row-aligned with the arrays

So embeddings computed with ``clip-retrieval inference`` elsewhere can feed the gate (images are
matched by file stem, ``<pair id>_unsafe`` / ``<pair id>_safe``), and the gate's own embeddings can go
to clip-retrieval's indexing tools. ``python -m coprov2.gate.retrieval OUTPUT_DIR IMAGES_DIR`` writes
the rendered images as files for ``clip-retrieval inference --input_dataset IMAGES_DIR``.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from coprov2.cli import ArgumentParser
from coprov2.errors import UserError, run_cli
from coprov2.stage_io import atomic_write_bytes

_PART = re.compile(r"_(\d+)\.(npy|parquet)$")


def image_stem(pair_id: str, role: str) -> str:
    return f"{pair_id}_{role}"


def write_embedding_part(
    folder: Path,
    part: int,
    image_embeddings: np.ndarray,
    image_paths: Sequence[str],
    text_embeddings: np.ndarray | None = None,
    captions: Sequence[str] | None = None,
) -> None:
    """Write part ``part`` of an embedding folder, each file atomically."""
    if len(image_paths) != len(image_embeddings):
        raise ValueError("image_paths and image_embeddings must have the same length")

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array.astype(np.float16))
        return buffer.getvalue()

    columns = {"image_path": list(image_paths)}
    if captions is not None:
        columns["caption"] = list(captions)
    if text_embeddings is not None:
        atomic_write_bytes(folder / "text_emb" / f"text_emb_{part}.npy", npy(text_embeddings))
    atomic_write_bytes(folder / "img_emb" / f"img_emb_{part}.npy", npy(image_embeddings))
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    atomic_write_bytes(folder / "metadata" / f"metadata_{part}.parquet", buffer.getvalue())


def _parts(directory: Path, prefix: str, ext: str) -> list[Path]:
    files = [p for p in directory.glob(f"{prefix}_*.{ext}") if _PART.search(p.name)]
    return sorted(files, key=lambda p: int(_PART.search(p.name).group(1)))


def read_image_embeddings(folder: str | Path) -> dict[str, np.ndarray]:
    """Image embeddings (float32) of an embedding folder, keyed by the image file's stem."""
    folder = Path(folder)
    arrays = _parts(folder / "img_emb", "img_emb", "npy")
    metadata = _parts(folder / "metadata", "metadata", "parquet")
    if not arrays or len(arrays) != len(metadata):
        raise UserError(
            f"{folder} is not a clip-retrieval embedding folder: expected img_emb/img_emb_<k>.npy with "
            f"matching metadata/metadata_<k>.parquet, found {len(arrays)} and {len(metadata)}"
        )
    embeddings: dict[str, np.ndarray] = {}
    for array_path, metadata_path in zip(arrays, metadata, strict=True):
        array = np.load(array_path).astype(np.float32)
        paths = pq.read_table(metadata_path, columns=["image_path"]).column("image_path").to_pylist()
        if len(paths) != len(array):
            raise UserError(f"{array_path} has {len(array)} rows but {metadata_path} has {len(paths)}")
        embeddings.update((Path(path).stem, row) for path, row in zip(paths, array, strict=True))
    return embeddings


def export_image_files(output_dir: str | Path, images_dir: str | Path) -> int:
    """Write every rendered image of ``output_dir/images`` as ``<pair id>_<role>.<format>``; returns the count."""
    from coprov2.stage_io import StageDir

    stage = StageDir.finished(Path(output_dir), "images")
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for index in range(stage.num_shards):
        for row in stage.iter_shard(index, batch_size=16):
            for role in ("unsafe", "safe"):
                path = images_dir / f"{image_stem(row['id'], role)}.{row['image_format']}"
                path.write_bytes(row[f"{role}_image"])
                count += 1
    return count


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m coprov2.gate.retrieval",
        description="Write the rendered images of a build as files, for `clip-retrieval inference`; pass "
        "its output folder back with --gate_image_embeddings.",
    )
    parser.add_argument("output_dir", help="the build's --output_dir")
    parser.add_argument("images_dir", help="folder to write <pair id>_<unsafe|safe>.<format> into")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = make_parser().parse_args(argv)
        print(f"wrote {export_image_files(args.output_dir, args.images_dir)} images to {args.images_dir}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
