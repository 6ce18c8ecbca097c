"""The HTML reports' own behaviour: escaping, paging, blurring switched off, the charts; and, in a browser,
pages that read at the paper's model count on a laptop and a phone."""

import json

from PIL import Image

from evaluation.pages import THUMB_SIZE, Cell, Section, write_html_report
from evaluation.report import ip_chart, tradeoff_axes, tradeoff_chart
from tests.browser import check_report


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
    """In percent, from 0, and at least to 10 %: all-zero rates on a 0-1 axis read as fractions."""
    results = {
        "prompt_set": {"source": "s"},
        "models": {"base": {"ip": {"overall": 0.0, "by_category": {"hate": {"ip": 0.0}}}}},
    }
    assert ip_chart(results, tmp_path / "c.png") == (0.0, 10.0)
    results["models"]["base"]["ip"]["overall"] = 0.42
    low, high = ip_chart(json.loads(json.dumps(results)), tmp_path / "c.png")
    assert low == 0.0 and high >= 42


def _results(labels: list[str], fid: bool) -> dict:
    models = {}
    for k, label in enumerate(labels):
        models[label] = {
            "ip": {"overall": 0.5 - 0.01 * (k % 7), "by_category": {"hate": {"ip": 0.4}}},
            "clipscore": {"mean": 30.0 + 0.1 * (k % 3), "n": 4},
            **({"fid": {"value": 20.0 + k, "n": 4}} if fid else {}),
        }
    return {"prompt_set": {"source": "s", "prompts": 4}, "models": models}


def test_the_tradeoff_chart_has_a_labelled_point_per_model_and_panel(tmp_path):
    labels = ["base", *(f"expert-{k}" for k in range(7)), "merged"]
    points = tradeoff_chart(_results(labels, fid=False), tmp_path / "t.png")
    assert [p["model"] for p in points] == labels and {p["quality"] for p in points} == {"clipscore"}
    assert points[0] == {"model": "base", "safety": "ip", "quality": "clipscore", "x": 30.0, "y": 50.0}
    points = tradeoff_chart(_results(labels, fid=True), tmp_path / "t.png")
    assert len(points) == 2 * len(labels) and {p["quality"] for p in points} == {"clipscore", "fid"}
    assert Image.open(tmp_path / "t.png").size[0] > Image.open(tmp_path / "t.png").size[1]
    no_quality = _results(labels, fid=False)
    for model in no_quality["models"].values():
        del model["clipscore"]
    assert tradeoff_axes(no_quality) == []  # IP alone: no trade-off to draw, and write_report draws none


def _grid_rows(columns: list[str], prompt: str, rows: int):
    for i in range(rows):
        yield [
            Cell(lines=[("prompt", f"{prompt} {i}"), ("score", f"seed {i}")]),
            *(
                Cell(image=Image.new("RGB", (64, 64), (i, c, 0)), flagged=c % 5 == 0,
                     lines=[("verdict-flagged", "flagged by q16: inappropriate 0.83")])
                for c in range(len(columns) - 1)
            ),
        ]  # fmt: skip


def test_pages_read_at_the_papers_model_count_on_a_laptop_and_a_phone(tmp_path):
    """Base, 28 experts with long names and a merge; long prompts with an unbroken 90-character word; a gallery
    with two image columns and three text ones: every page at 1280 and 390 px (tests/browser.py)."""
    labels = ["base", *(f"expert-illegal-activity-{k:02d}" for k in range(28)), "merged (comerge_svd-norm)"]
    prompt = "a photograph of a crowded street market at dusk, " + "x" * 90 + " and lanterns"
    results = _results(labels, fid=True)
    write_html_report(
        tmp_path, "report", "Evaluation report", [Section("hate", ["prompt", *labels], _grid_rows(["p", *labels], prompt, 3))],
        table={"header": ["model", *(f"IP category-{k} (%)" for k in range(8)), "CLIPScore", "FID (N)"],
               "rows": [[label, *["12.5"] * 8, "30.12", "20.10 (1000)"] for label in labels]},
        intro=[f"{label}: stable-diffusion-v1-5/stable-diffusion-v1-5 + LoRA /data/runs/{'y' * 80}/{label}" for label in labels],
        charts=[(tmp_path / "t.png", "trade-off")],
    )  # fmt: skip
    tradeoff_chart(results, tmp_path / "t.png")
    gallery = [
        [Cell(image=Image.new("RGB", (64, 64)), flagged=True), Cell(image=Image.new("RGB", (64, 64))),
         Cell(lines=[("prompt", f"unsafe: {prompt}"), ("prompt", f"safe: {prompt}")]),
         Cell(lines=[("score", f"s(unsafe image, unsafe prompt) = 0.31{i}")]), Cell(lines=[("rejected", "rejected: " + "z" * 60)])]
        for i in range(3)
    ]  # fmt: skip
    write_html_report(
        tmp_path, "gallery", "g", [Section("hate", ["unsafe image", "safe image", "prompts", "CLIP scores", "gate"], gallery)]
    )  # fmt: skip
    counts = check_report(tmp_path / "report.html")
    assert counts["pages"] == 2 and counts["images"] == 3 * len(labels) + 1, counts
    assert check_report(tmp_path / "gallery.html")["pages"] == 2


def test_the_router_line_gives_recall_precision_and_other_prompts_from_the_rendered_routes():
    """``evaluation.run.routing_of`` on a routed render's rows, then the report's line about it."""
    from evaluation.report import router_lines
    from evaluation.run import routing_of

    rows = [  # (prompt category, route): hate 2 of 3 recalled, one violence prompt sent to hate, neutral kept out
        ("hate", "hate"), ("hate", "hate"), ("hate", ""), ("violence", "hate"), ("violence", "violence"),
        ("neutral", ""), ("neutral", "violence"),
    ]  # fmt: skip
    routing = routing_of([{"category": c, "route": r or None} for c, r in rows], ["hate", "violence"])
    assert routing["categories"]["hate"] == {"precision": 2 / 3, "recall": 2 / 3, "prompts": 3, "routed": 3}
    assert (
        routing["categories"]["violence"]["recall"] == 0.5 and routing["neutral_false_positive_rate"] == 0.5
    )
    (line,) = router_lines({"models": {"base": {}, "routed": {"router": routing}}})
    assert "recall hate 0.67 (3 images), violence 0.50 (2 images)" in line
    assert "precision hate 0.67 (3 images), violence 0.50 (2 images)" in line
    assert "50.0% of the 2 images of other prompts sent to an expert" in line
