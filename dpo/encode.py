"""VAE latents and text embeddings, computed once per (dataset, base model, resolution) and cached on disk.

Training steps then never run the VAE encoder or the text encoders (the release runs both on every
step). The latent *distribution* is cached (mean and std), so each step still draws a fresh latent
as the release does. With ``flipped=True`` the latent arrays hold ``2N`` rows: row ``N + i`` is the
encoding of pair ``i``'s image flipped left-right, so the release's random horizontal flip is a
choice of rows at each step. Flipped images are encoded, not flipped latents: the VAE encoder's
convolutions are not mirror-symmetric, so flipping a latent is not the latent of the flipped image. Text
goes through the pipeline's own ``encode_prompt``, as the base's family (``dpo/families``) calls it, so
SD1.5/SD2.1, SDXL (two encoders, pooled embeddings), SD3 (two CLIPs and T5) and FLUX (CLIP pooled, T5
states) embed exactly as they do at inference; SDXL's ``time_ids`` are computed per pair from its
original size and crop, as the release does. The latents are the VAE's own; the family maps them to what
its denoiser reads at each step (scale, and SD3's and FLUX's shift).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from coprov2.errors import UserError
from dpo.data import PreferencePairs
from dpo.families import Family

CACHE_VERSION = 2
#: Per-row arrays of the cache; the others (``empty_text``, ``empty_pooled``) are one small tensor each.
ROW_ARRAYS = ("winner_mean", "winner_std", "loser_mean", "loser_std", "text", "pooled", "time_ids")
#: The arrays that hold a second, flipped copy of every row in a flipped cache.
LATENT_ARRAYS = ("winner_mean", "winner_std", "loser_mean", "loser_std")


class CachedRows:
    """Rows of one cached ``.npy`` array, read from the file only when indexed (``os.pread``).

    ``rows[index]`` (an index tensor or list) reads just those rows into a new tensor. Not a memory
    map: mapped pages count in the process's RSS once touched, and a long run touches them all, so
    with a map the resident memory would still grow with the number of pairs in the cache.
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_2_0
                if version >= (2, 0)
                else np.lib.format.read_array_header_1_0
            )
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or dtype != np.float32:
            raise UserError(f"{path}: not a cache array written by this version (delete the cache folder)")
        self.path, self.shape, self.dtype = path, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: torch.Tensor | list[int]) -> torch.Tensor:
        rows = [
            np.frombuffer(
                os.pread(self._fd, self.row_bytes, self.offset + int(i) * self.row_bytes), self.dtype
            )
            for i in np.asarray(index).reshape(-1)
        ]
        return torch.from_numpy(np.stack(rows).reshape(-1, *self.shape[1:]))


@dataclass
class EncodedPairs:
    """Per row: winner/loser latent mean and std ``[N, C, h, w]`` (``[2N, ...]`` when ``flipped``: rows
    ``N..2N-1`` are the flipped images), text ``[N, L, D]``; SDXL extras."""

    winner_mean: torch.Tensor | CachedRows
    winner_std: torch.Tensor | CachedRows
    loser_mean: torch.Tensor | CachedRows
    loser_std: torch.Tensor | CachedRows
    text: torch.Tensor | CachedRows
    empty_text: torch.Tensor
    pooled: torch.Tensor | CachedRows | None = None
    empty_pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | CachedRows | None = None
    flipped: bool = False


def cache_key(
    pairs: PreferencePairs,
    base: str,
    resolution: int,
    flipped: bool = False,
    text_settings: dict | None = None,
) -> str:
    """The cache folder's name; ``text_settings``: the family's options that change the encodings (T5's length)."""
    payload = json.dumps(
        [
            CACHE_VERSION, pairs.fingerprint, base, resolution, *(["flipped"] if flipped else []),
            *([text_settings] if text_settings else []),
        ]
    )  # fmt: skip
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def resize_and_crop(
    image: Image.Image, resolution: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The release's transform up to its random flip: bilinear resize of the short side, center crop, [-1, 1].

    Returns the tensor, the original ``(height, width)`` and the crop's ``(top, left)`` (SDXL time ids).
    """
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    top, left = (height - resolution) // 2, (width - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return array, original, (top, left)


class _RowWriter:
    """Writes per-row float32 arrays into ``.npy`` files, batch by batch, with plain positioned writes
    (a writable memory map would keep every written page resident in this process)."""

    def __init__(self, folder: Path, rows: int, sizes: dict[str, int] | None = None) -> None:
        """``rows`` per array, or ``sizes[name]`` for the arrays named there."""
        self.folder, self.rows, self.sizes = folder, rows, sizes or {}
        self.files: dict[str, tuple[object, int, int, int]] = {}

    def put(self, name: str, start: int, values: torch.Tensor) -> None:
        values = np.ascontiguousarray(values.float().cpu().numpy())
        if name not in self.files:
            handle = open(self.folder / f"{name}.npy", "wb")  # noqa: SIM115 - closed in close()
            rows = self.sizes.get(name, self.rows)
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, *values.shape[1:])}
            np.lib.format.write_array_header_2_0(handle, header)
            self.files[name] = (handle, handle.tell(), values[0].nbytes, rows)
        handle, offset, row_bytes, _ = self.files[name]
        handle.seek(offset + start * row_bytes)
        handle.write(values.tobytes())

    def close(self) -> None:
        for handle, offset, row_bytes, rows in self.files.values():
            handle.truncate(offset + rows * row_bytes)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.files.clear()


def encode_pairs(
    pipe,
    family: Family,
    pairs: PreferencePairs,
    resolution: int,
    device: torch.device,
    folder: Path,
    batch_size: int = 8,
    progress: bool = True,
    flipped: bool = False,
) -> None:
    """Run the VAE encoder and the text encoder(s) of ``pipe`` over every pair, into ``folder``.

    Images are streamed (one batch decoded at a time) and each batch's outputs go straight to their
    rows of the ``.npy`` files, so memory is bounded by the batch, not by the number of pairs. With
    ``flipped``, each image is also encoded flipped left-right, into rows ``N + i``.
    """
    vae = pipe.vae
    n = len(pairs)
    writer = _RowWriter(folder, n, {name: 2 * n for name in LATENT_ARRAYS} if flipped else None)
    batches = range(0, len(pairs), batch_size)
    stream = pairs.iter_image_bytes()
    for start in tqdm(batches, desc="encode pairs", unit="batch", disable=not progress):
        rows = range(start, min(start + batch_size, len(pairs)))
        payloads = [next(stream) for _ in rows]
        for position, (which, key) in enumerate((("safe", "winner"), ("unsafe", "loser"))):
            prepared = [
                resize_and_crop(pairs.decode_bytes(payload[position], i, which), resolution)
                for i, payload in zip(rows, payloads, strict=True)
            ]
            pixels = torch.stack([p[0] for p in prepared]).to(device, vae.dtype)
            for offset, images in ((0, pixels), (n, pixels.flip(-1))) if flipped else ((0, pixels),):
                with torch.no_grad():
                    distribution = vae.encode(images).latent_dist
                writer.put(f"{key}_mean", offset + start, distribution.mean)
                writer.put(f"{key}_std", offset + start, distribution.std)
            time_ids = family.time_ids(pipe, [(original, crop) for _, original, crop in prepared], resolution)
            if time_ids is not None and which == "safe":
                writer.put("time_ids", start, time_ids)
        text, pooled = family.encode_text(pipe, [pairs.captions[i] for i in rows], device)
        writer.put("text", start, text)
        if pooled is not None:
            writer.put("pooled", start, pooled)
    writer.close()
    empty_text, empty_pooled = family.encode_text(pipe, [""], device)
    np.save(folder / "empty_text.npy", empty_text.float().cpu().numpy()[0])
    if empty_pooled is not None:
        np.save(folder / "empty_pooled.npy", empty_pooled.float().cpu().numpy()[0])


def load_encoded(folder: Path, flipped: bool = False) -> EncodedPairs:
    """The cache in ``folder``: per-row arrays read row by row on demand, the empty-prompt embeddings in memory."""

    def rows(name: str) -> CachedRows | None:
        path = folder / f"{name}.npy"
        return CachedRows(path) if path.exists() else None

    def small(name: str) -> torch.Tensor | None:
        path = folder / f"{name}.npy"
        return torch.from_numpy(np.load(path)) if path.exists() else None

    return EncodedPairs(
        **{name: rows(name) for name in ROW_ARRAYS},
        empty_text=small("empty_text"),
        empty_pooled=small("empty_pooled"),
        flipped=flipped,
    )


def publish(partial: Path, folder: Path) -> None:
    """Rename a whole ``partial`` cache folder (``meta.json`` written last) to ``folder``; when another run
    wrote the same key first, keep its files (same inputs, same files) and drop ``partial``."""
    try:
        partial.rename(folder)
    except OSError:
        if not (folder / "meta.json").exists():
            raise
        shutil.rmtree(partial)


def cached_encode(
    load_pipe,
    pairs: PreferencePairs,
    family: Family,
    base: str,
    resolution: int,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    flipped: bool = False,
) -> tuple[EncodedPairs, Path, bool]:
    """Encoded pairs from ``cache_dir`` or, on a miss, from ``load_pipe()`` (then written atomically).

    Returns the pairs, the cache folder and whether it was a hit. Each writer encodes into its own
    ``<key>.partial-*`` folder, with ``meta.json`` inside, renamed to ``<key>`` when whole: a killed encode
    is redone, and of two runs that miss the same key at once (seeds trained side by side on one cache)
    the first rename wins and the other keeps the winner's files.
    """
    folder = Path(cache_dir) / cache_key(pairs, base, resolution, flipped, family.settings())
    if (folder / "meta.json").exists():
        return load_encoded(folder, flipped), folder, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    encode_pairs(load_pipe(), family, pairs, resolution, device, partial, progress=progress, flipped=flipped)
    meta = {
        "source": pairs.source,
        "base": base,
        "resolution": resolution,
        "rows": len(pairs),
        "flipped": flipped,
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    publish(partial, folder)
    # Train from the files either way: the same values in the same memory layout as a cache hit, so a
    # run that encoded and one that read the cache take bit-identical steps.
    return load_encoded(folder, flipped), folder, False
