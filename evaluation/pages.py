"""Static HTML reports a person can look at, opened from disk (no server): an index page and paged grids.

A report is ``<name>.html`` (the index: a table, charts, links to every page) beside a folder ``<name>/``
holding the pages (``<section>-<k>.html``, ``rows_per_page`` rows each), JPEG thumbnails of at most
``THUMB_SIZE`` px and the page style and script: never every full image inlined in one file, so a report
of thousands of images opens fast and can be zipped and shared. Flagged images are blurred until clicked
(``blur=False`` turns it off). The folder is written beside its target and swapped in whole, the index
last, so an interrupted report leaves the previous one.

The templates are jinja2 (as huggingface_hub's cards), autoescaped: prompts are shown as text, never as HTML.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from coprov2.stage_io import atomic_write_text, staging_folder, swap_in

THUMB_SIZE = 256
ASSETS = ("report.css", "report.js")


@dataclass
class Cell:
    """One cell of a grid row: an image (PIL image, a file, or :func:`thumbnail` bytes) and lines of text."""

    image: Image.Image | bytes | Path | None = None
    #: The full-size file to link from the thumbnail's cell.
    full: Path | None = None
    flagged: bool = False
    #: ``(css class, text)``: ``prompt``, ``verdict-flagged``, ``verdict-clean``, ``kept``, ``rejected``, ``score``.
    lines: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Section:
    """A group of rows (a category) paged into grids; ``rows`` is consumed lazily, one page at a time."""

    name: str
    columns: list[str]
    rows: Iterable[list[Cell]]
    unit: str = "rows"


def _environment() -> jinja2.Environment:
    templates = resources.files("evaluation") / "templates"
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (templates / name).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "all"


def thumbnail(image: Image.Image | bytes | Path) -> bytes:
    """JPEG bytes of at most ``THUMB_SIZE`` px on the long side (small images stay small; CSS scales them)."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, Path):
        image = Image.open(image)
    thumb = image.convert("RGB")
    if max(thumb.size) > THUMB_SIZE:
        thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _pages(rows: Iterable[list[Cell]], size: int) -> Iterator[list[list[Cell]]]:
    iterator = iter(rows)
    while page := list(islice(iterator, size)):
        yield page


def write_html_report(
    output_dir: Path,
    name: str,
    title: str,
    sections: Iterable[Section],
    *,
    rows_per_page: int = 24,
    blur: bool = True,
    blur_rule: str = "flagged by a detector",
    intro: list[str] | None = None,
    table: dict[str, Any] | None = None,
    charts: list[tuple[Path, str]] | None = None,
    sections_title: str = "Categories",
) -> Path:
    """Write ``output_dir/<name>.html`` and ``output_dir/<name>/``; returns the index path."""
    env = _environment()
    final = output_dir / name
    staging = staging_folder(final)
    try:
        for asset in ASSETS:
            (staging / asset).write_text(
                (resources.files("evaluation") / "templates" / asset).read_text(encoding="utf-8"),
                encoding="utf-8",
            )
        index_sections = []
        for section in sections:
            section_slug, count, pages = slug(section.name), 0, []
            for number, page_rows in enumerate(_pages(section.rows, rows_per_page), start=1):
                # A column is an image column when any row of the page has an image in it; its cells go in the
                # row's image strip (a missing image keeps its place there), the others in the row's header.
                image_columns = {
                    c for row in page_rows for c, cell in enumerate(row) if cell.image is not None
                }
                labelled = len(section.columns) - len(image_columns) > 1
                rendered = []
                for r, row in enumerate(page_rows):
                    head, shots = [], []
                    for c, cell in enumerate(row):
                        thumb = None
                        if cell.image is not None:
                            thumb = f"thumbs/{section_slug}/{number}-{r}-{c}.jpg"
                            (staging / thumb).parent.mkdir(parents=True, exist_ok=True)
                            payload = cell.image if isinstance(cell.image, bytes) else thumbnail(cell.image)
                            (staging / thumb).write_bytes(payload)
                        (shots if c in image_columns else head).append({
                            "image": thumb, "name": section.columns[c], "flagged": blur and cell.flagged,
                            "label": section.columns[c] if labelled else None,
                            "full": os.path.relpath(cell.full, final) if cell.full else None,
                            "lines": [{"kind": kind, "text": text} for kind, text in cell.lines],
                        })  # fmt: skip
                    rendered.append({"head": head, "shots": shots})
                count += len(page_rows)
                pages.append({"href": f"{name}/{section_slug}-{number}.html", "rows": rendered})
            for number, page in enumerate(pages, start=1):
                html = env.get_template("page.html").render(
                    title=f"{title}: {section.name} ({number}/{len(pages)})", assets=".", index=f"../{name}.html",
                    columns=section.columns, rows=page["rows"],
                    previous=f"{section_slug}-{number - 1}.html" if number > 1 else None,
                    next=f"{section_slug}-{number + 1}.html" if number < len(pages) else None,
                )  # fmt: skip
                (staging / f"{section_slug}-{number}.html").write_text(html, encoding="utf-8")
            index_sections.append(
                {"name": section.name, "count": count, "unit": section.unit, "pages": pages}
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, final)
    index = output_dir / f"{name}.html"
    atomic_write_text(
        index,
        env.get_template("index.html").render(
            title=title, assets=name, intro=intro or [], table=table, blur=blur, blur_rule=blur_rule,
            charts=[{"src": os.path.relpath(path, output_dir), "alt": alt} for path, alt in charts or []],
            sections=index_sections, sections_title=sections_title,
        ),
    )  # fmt: skip
    return index
