"""FID: the Fréchet distance between Gaussians fitted to Inception pool features of generated and
reference images.

- Features: pytorch-fid's InceptionV3 (2048-d pool) when installed (the ``eval-ref`` extra; it needs
  torchvision, which cannot sit beside the CPU torch build of CI), else a pluggable extractor
  (``--fid_features module:factory``; ``tiny`` is a seeded random CNN for tests and the smoke run, its
  numbers are not FIDs anyone publishes). Each image is fed at its own size, batched with images of
  the same size, and the network resizes it (pytorch-fid's ``resize_input``): same-size sets give
  pytorch-fid's features, and mixed sizes work (the release's stacking fails on them).
- Statistics stream: a running sum and sum of outer products (float64), so memory is D^2, not N*D.
- The distance is computed without scipy: tr sqrt(S1 S2) = sum of sqrt(eigenvalues of
  S1^1/2 S2 S1^1/2), a symmetric PSD matrix, so ``eigvalsh`` is exact and stable (scipy's ``sqrtm``
  is not a dependency here, and pytorch-fid's call of it is deprecated in SciPy 1.17).
- FID is biased at small N: a warning is logged when either side has fewer than 2,048 images, and N
  is stored with every FID.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from coprov2.errors import UserError
from evaluation.metrics.ip import import_factory

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SMALL_N = 2048


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(
            f"FID: feature sizes differ ({mu1.shape[0]} vs {mu2.shape[0]}); use the same extractor on both sides"
        )
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class RunningStats:
    """Mean and covariance (ddof 1, as ``np.cov``) of feature rows added batch by batch."""

    def __init__(self) -> None:
        self.n = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros(features.shape[1])
            self.outer = np.zeros((features.shape[1], features.shape[1]))
        self.n += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise UserError(f"FID needs at least 2 images on each side, got {self.n}")
        mu = self.total / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def warn_small(n: int, side: str) -> None:
    if n < SMALL_N:
        logger.warning(
            "FID on %d %s images: FID is biased below %d images; compare only at equal N", n, side, SMALL_N
        )


def _batches_by_size(images: Sequence[Image.Image]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        groups.setdefault(image.size, []).append(position)
    return groups


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ``ToTensor`` (RGB, [0, 1], CHW), which pytorch-fid applies before the network."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


class _SizeGroupedExtractor:
    """Runs ``self.net`` on same-size groups of images, returning features in input order."""

    name: str
    net: torch.nn.Module
    device: torch.device

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * len(images)
        for positions in _batches_by_size(images).values():
            batch = torch.stack([_to_tensor(images[p]) for p in positions]).to(self.device)
            features = self.forward(batch).float().cpu().numpy()
            for position, row in zip(positions, features, strict=True):
                out[position] = row
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InceptionFeatures(_SizeGroupedExtractor):
    """pytorch-fid's InceptionV3 pool3 features (2048-d), its weights (downloaded by pytorch-fid once)."""

    name = "pytorch-fid-inception-v3-pool3"

    def __init__(self, device: torch.device) -> None:
        try:
            from pytorch_fid.inception import InceptionV3
        except ImportError:
            raise UserError(
                "--fid_features inception needs pytorch-fid (pip install 'alignguard[eval-ref]', with torchvision); "
                "or give --fid_features module:factory (or tiny, for a smoke test)"
            ) from None
        self.device = device
        self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)[0].flatten(1)


class TinyFeatures(_SizeGroupedExtractor):
    """A seeded random CNN (32-d) built from code: the FID code path offline, not a published FID."""

    name = "tiny-random-cnn-32"

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.device = device
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        self.net.to(device).eval()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        resized = torch.nn.functional.interpolate(batch, size=(64, 64), mode="bilinear", align_corners=False)
        return self.net(2 * resized - 1).flatten(1)


def load_extractor(spec: str, device: torch.device, config: Any = None) -> Any:
    """``inception``, ``tiny`` or ``module:factory`` (called with ``(device, config)``)."""
    if spec == "inception":
        return InceptionFeatures(device)
    if spec == "tiny":
        return TinyFeatures(device)
    return import_factory(spec, "--fid_features")(device, config)


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` as RGB; a file that is not a readable image is a UserError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"{path}: not a readable image ({error}); remove or replace the file") from None


def image_files(folder: str | Path, option: str) -> list[Path]:
    """The image files of ``folder`` (sorted), refusing a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{option} {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{option} {folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def folder_stats(files: Iterable[Path], extractor: Any, batch_size: int) -> RunningStats:
    stats, batch = RunningStats(), []
    for path in files:
        batch.append(open_image(path))
        if len(batch) == batch_size:
            stats.add(extractor(batch))
            batch = []
    if batch:
        stats.add(extractor(batch))
    return stats


def reference_stats(
    reference: str, extractor: Any, batch_size: int, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu, sigma, n)`` of the reference: an ``.npz`` of ``mu``, ``sigma`` (and ``n`` if known; else 0),
    or a folder of images, whose statistics are cached under ``cache_dir`` by file list and extractor."""
    path = Path(reference)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserError(f"--fid_reference {path}: no such file")
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise UserError(
                    f"--fid_reference {path}: needs arrays 'mu' and 'sigma' (has {', '.join(data)})"
                )
            return data["mu"], data["sigma"], int(data["n"]) if "n" in data else 0
    files = image_files(path, "--fid_reference")
    key = hashlib.sha256(
        "\n".join(
            [extractor.name, *(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)]
        ).encode()
    ).hexdigest()[:16]
    cached = cache_dir / f"fid-reference-{key}.npz"
    if cached.exists():
        with np.load(cached) as data:
            return data["mu"], data["sigma"], int(data["n"])
    stats = folder_stats(files, extractor, batch_size)
    mu, sigma = stats.mean_cov()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.partial-{os.getpid()}.npz")  # ranks may race to write it
    np.savez(partial, mu=mu, sigma=sigma, n=stats.n)
    partial.replace(cached)
    return mu, sigma, stats.n
