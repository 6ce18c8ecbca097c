"""A dataset's gallery: per category, its pairs as unsafe | safe with both prompts, the four CLIP scores and
the gate's decision, paged (``gallery.html`` + ``gallery/``, :mod:`evaluation.pages`).

Sources:

- a build's output folder (``python -m coprov2.build --output_dir OUT``): every rendered pair, kept **and
  rejected**, with the gate's reasons (``gate/decisions.jsonl``), read once from the images and gate shards;
- any CoProV2 dataset (a folder or Hub id ``load_dataset`` opens, the imported release included), per split:
  the kept pairs, streamed.

Blurring: with detector verdicts (``python -m evaluation.dataset`` passes its own) an image is blurred when a
detector flagged it; without them every unsafe-side image is, since it was made to be unsafe. At most
``max_pairs`` pairs per category (and split) are shown, their thumbnails made during the one pass, so memory
holds thumbnails, never the dataset.

``python -m evaluation.gallery coprov2-out --output_dir coprov2-out/gallery-report``
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from coprov2.cli import ArgumentParser
from coprov2.errors import UserError, run_cli
from coprov2.gate.clip_scores import SCORE_NAMES
from coprov2.stage_io import StageDir
from evaluation.pages import Cell, Section, thumbnail, write_html_report

#: How the gallery labels the gate's four scores: s(image, prompt).
SCORE_LABELS = dict(
    zip(
        SCORE_NAMES, ("s(u img, u txt)", "s(s img, s txt)", "s(u img, s txt)", "s(s img, u txt)"), strict=True
    )
)
COLUMNS = ["unsafe image", "safe image", "prompts", "CLIP scores", "gate"]
#: ``(split, id) -> (unsafe flagged by, safe flagged by)``: comma-separated detector names, empty when clean.
Flags = Mapping[tuple[str, str], tuple[str, str]]


def is_build_folder(source: str | Path) -> bool:
    path = Path(source)
    return (path / "gate" / "manifest.json").is_file() and (path / "images" / "manifest.json").is_file()


def _build_rows(root: Path) -> Iterator[dict[str, Any]]:
    """Every rendered pair of a build with its gate scores and decision (kept and rejected)."""
    decisions = {}
    with (root / "gate" / "decisions.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            decisions[record["id"]] = record
    images, gate = StageDir.finished(root, "images"), StageDir.finished(root, "gate")
    for index in range(images.num_shards):  # gate shard i scores images shard i
        scores = {row["id"]: row for row in gate.iter_shard(index)}
        for row in images.iter_shard(index):
            decision = decisions.get(row["id"], {"passed": False, "reasons": ["not gated"]})
            yield {**row, **{k: scores.get(row["id"], {}).get(k) for k in SCORE_NAMES},
                   "split": "all", "passed": decision["passed"], "reasons": decision["reasons"]}  # fmt: skip


def _dataset_rows(source: str, config: str | None, splits: list[str]) -> Iterator[dict[str, Any]]:
    import datasets

    for split in splits:
        try:
            stream = datasets.load_dataset(source, config, split=split, streaming=True)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(f"gallery source {source}: {str(error)[:300]}") from None
        for column in ("unsafe_image", "safe_image"):
            stream = stream.cast_column(column, datasets.Image(decode=False))
        for row in stream:
            images = {k: (row[k] or {}).get("bytes") for k in ("unsafe_image", "safe_image")}
            yield {**row, **images, "split": split, "passed": True, "reasons": []}


def _cell(image: bytes | None, side: str, flags: tuple[str, str] | None) -> Cell:
    if image is None:
        return Cell(lines=[("score", "no image")])
    flagged_by = flags[0 if side == "unsafe" else 1] if flags is not None else None
    flagged = bool(flagged_by) if flags is not None else side == "unsafe"
    lines = [("verdict-flagged", f"flagged by {flagged_by}")] if flagged_by else []
    return Cell(image=thumbnail(image), flagged=flagged, lines=lines)


def _pair_cells(row: dict[str, Any], flags: Flags | None) -> list[Cell]:
    mine = flags.get((row["split"], row["id"]), ("", "")) if flags is not None else None
    scores = [
        ("score", f"{label} = {row[name]:.3f}")
        for name, label in SCORE_LABELS.items()
        if row.get(name) is not None
    ]
    decision = ("kept", "kept") if row["passed"] else ("rejected", "rejected: " + ", ".join(row["reasons"]))
    return [
        _cell(row["unsafe_image"], "unsafe", mine),
        _cell(row["safe_image"], "safe", mine),
        Cell(
            lines=[
                ("prompt", f"unsafe: {row['unsafe_prompt']}"),
                ("prompt", f"safe: {row.get('safe_prompt') or '-'}"),
            ]
        ),
        Cell(lines=scores or [("score", "no CLIP scores")]),
        Cell(lines=[decision, ("score", f"id {row['id']}")]),
    ]


def write_gallery(
    source: str | Path, output_dir: str | Path, *, dataset_config: str | None = None,
    splits: tuple[str, ...] = ("train", "test"), flags: Flags | None = None, blur: bool = True,
    rows_per_page: int = 24, max_pairs: int | None = 96,
) -> Path:  # fmt: skip
    """Write ``output_dir/gallery.html`` for a build folder or a dataset; returns its path."""
    build = is_build_folder(source)
    rows = _build_rows(Path(source)) if build else _dataset_rows(str(source), dataset_config, list(splits))
    sections: dict[tuple[str, str], list[list[Cell]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        key = (row["split"], row["category"])
        if max_pairs is None or len(sections[key]) < max_pairs:
            sections[key].append(_pair_cells(row, flags))
        counts["kept" if row["passed"] else "rejected"] += 1
    if not sections:
        raise UserError(f"gallery source {source}: no pairs to show")
    what = "every rendered pair, kept and rejected by the gate" if build else "the dataset's pairs"
    intro = [
        f"Source: {source}: {what} ({counts['kept']} kept, {counts['rejected']} rejected); at most {max_pairs} "
        "pairs per category are shown." if max_pairs else f"Source: {source}: {what}.",
        "Each pair: the unsafe and the safe image, rendered from the same seed, with both prompts, the CLIP "
        "similarities s(image, prompt) of each image with each prompt, and the gate's decision.",
    ]  # fmt: skip
    return write_html_report(
        Path(output_dir), "gallery", f"CoProV2 gallery: {Path(str(source)).name}",
        [Section(category if split == "all" else f"{split} / {category}", COLUMNS, cells, unit="pairs shown")
         for (split, category), cells in sorted(sections.items())],
        rows_per_page=rows_per_page, blur=blur, intro=intro,
        blur_rule="flagged by a detector" if flags is not None else "on the unsafe side",
    )  # fmt: skip


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m evaluation.gallery",
        description="A browsable gallery of a CoProV2 build (every pair, kept and rejected, with the gate's "
        "reasons) or dataset (folder or Hub id): per category, unsafe | safe images with both prompts and the "
        "four CLIP scores; static HTML opened from disk. Unsafe images are blurred until clicked.",
    )
    parser.add_argument("source", help="a build's --output_dir, or a CoProV2 dataset folder or Hub id")
    parser.add_argument("--output_dir", required=True, help="where gallery.html and gallery/ are written")
    parser.add_argument("--dataset_config", help="dataset config (default: all)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], help="dataset splits to show")
    parser.add_argument("--rows_per_page", type=int, default=24, help="pairs per page")
    parser.add_argument("--max_pairs", type=int, default=96, help="pairs shown per category (0: all)")
    parser.add_argument("--no_blur", dest="blur", action="store_false", help="do not blur unsafe images")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = make_parser().parse_args(argv)
        if args.rows_per_page < 1 or args.max_pairs < 0:
            raise UserError("--rows_per_page must be >= 1 and --max_pairs >= 0")
        if (
            not is_build_folder(args.source)
            and not Path(args.source).exists()
            and args.source.count("/") != 1
        ):
            raise UserError(f"gallery source {args.source}: not a build folder, a dataset folder or a Hub id")
        path = write_gallery(args.source, args.output_dir, dataset_config=args.dataset_config, splits=tuple(args.splits),
                             blur=args.blur, rows_per_page=args.rows_per_page, max_pairs=args.max_pairs or None)  # fmt: skip
        print(f"gallery: {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
