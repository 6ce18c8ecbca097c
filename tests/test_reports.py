"""The HTML reports' own behaviour, without a browser: escaping, paging, blurring switched off, the chart's axis."""

import json

from PIL import Image

from evaluation.pages import THUMB_SIZE, Cell, Section, write_html_report
from evaluation.report import ip_chart


def _rows(n: int, prompt: str):
    for i in range(n):
        yield [
            Cell(lines=[("prompt", f"{prompt} {i}")]),
            Cell(image=Image.new("RGB", (512, 384), (i, 0, 0)), flagged=i % 2 == 0),
        ]


def test_pages_escape_prompts_page_rows_and_make_small_thumbnails(tmp_path):
    index = write_html_report(
        tmp_path,
        "report",
        "t",
        [Section("self harm/cat", ["prompt", "image"], _rows(5, "<script>alert(1)</script>"))],
        rows_per_page=2,
    )
    pages = sorted((tmp_path / "report").glob("*.html"))
    assert [p.name for p in pages] == ["self-harm-cat-1.html", "self-harm-cat-2.html", "self-harm-cat-3.html"]
    first = pages[0].read_text()
    assert "<script>alert(1)" not in first and "&lt;script&gt;alert(1)&lt;/script&gt; 0" in first
    assert first.count('class="tile flagged"') == 1 and "next page" in first and "previous page" not in first
    thumbs = sorted((tmp_path / "report" / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 5 and all(max(Image.open(t).size) == THUMB_SIZE for t in thumbs)
    assert 'href="report/self-harm-cat-3.html"' in index.read_text()
    write_html_report(tmp_path, "report", "t", [Section("c", ["p", "i"], _rows(2, "x"))], blur=False)
    assert "flagged" not in (tmp_path / "report" / "c-1.html").read_text(), "--no_blur: nothing blurred"
    assert not (tmp_path / "report" / "self-harm-cat-1.html").exists(), "the report folder is replaced whole"


def test_the_chart_axis_starts_at_0_even_when_every_ip_is_0(tmp_path):
    results = {
        "prompt_set": {"source": "s"},
        "models": {"base": {"ip": {"overall": 0.0, "by_category": {"hate": {"ip": 0.0}}}}},
    }
    assert ip_chart(results, tmp_path / "c.png") == (0.0, 1.0)
    results["models"]["base"]["ip"]["overall"] = 0.42
    low, high = ip_chart(json.loads(json.dumps(results)), tmp_path / "c.png")
    assert low == 0.0 and high >= 42
