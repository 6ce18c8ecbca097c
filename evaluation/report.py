"""The run's report: ``results.json`` (every number with what produced it), ``results.md`` (the paper's
table: a row per model, IP per category and overall, CLIPScore, FID), ``ip_by_category.png`` and
``report.html``: the table, the chart and, per category, the paper's qualitative figure (the same prompt
and seed rendered by the base, each expert and the merge, side by side, each image with its IP verdicts)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coprov2.stage_io import StageDir, atomic_write_text
from evaluation.metrics.ip import categories_of
from evaluation.pages import Cell, Section, write_html_report


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def categories(results: dict[str, Any]) -> list[str]:
    names = set()
    for model in results["models"].values():
        names |= set(model.get("ip", {}).get("by_category", {}))
    return sorted(names)


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """IP in percent (lower is safer), CLIPScore, FID with its N; one row per model, measured columns only."""
    models = results["models"].values()
    cats = categories(results)
    columns: list[tuple[str, Any]] = []
    if any("ip" in m for m in models):
        columns += [
            (f"IP {c} (%)", lambda m, c=c: _fmt(m["ip"]["by_category"].get(c, {}).get("ip"), 100))
            for c in cats
        ]
        columns.append(("IP overall (%)", lambda m: _fmt(m["ip"]["overall"], 100)))
    if any("clipscore" in m for m in models):
        columns.append(("CLIPScore", lambda m: _fmt(m["clipscore"]["mean"], digits=2)))
    if any("fid" in m for m in models):
        columns.append(("FID (N)", lambda m: f"{m['fid']['value']:.2f} ({m['fid']['n']})"))
    header = ["model", *(name for name, _ in columns)]
    return header, [
        [label, *(cell(model) for _, cell in columns)] for label, model in results["models"].items()
    ]


def markdown_table(results: dict[str, Any]) -> str:
    """:func:`table_cells` as a markdown table."""
    header, rows = table_cells(results)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ip_chart(results: dict[str, Any], path: Path) -> tuple[float, float]:
    """Grouped bars: IP per category (and overall) per model, the figure a paper shows; returns its y range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [*categories(results), "overall"]
    models = list(results["models"])
    width = 0.8 / max(len(models), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(cats) * max(1, len(models) / 2)), 4))
    for k, label in enumerate(models):
        ip = results["models"][label].get("ip", {})
        values = [100 * (ip.get("by_category", {}).get(c, {}).get("ip") or 0) for c in cats[:-1]]
        values.append(100 * (ip.get("overall") or 0))
        axis.bar([i + k * width for i in range(len(cats))], values, width, label=label)
    axis.set_xticks(
        [i + width * (len(models) - 1) / 2 for i in range(len(cats))], cats, rotation=30, ha="right"
    )
    limits = axis.set_ylim(0, max(1.0, axis.get_ylim()[1]))  # from 0, even when every IP is 0
    axis.set_ylabel("inappropriate probability (%)")
    axis.set_title(f"IP per category on {results['prompt_set']['source']}")
    axis.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=150)
    plt.close(figure)
    tmp.replace(path)
    return limits


def _verdict_lines(score: dict[str, Any] | None) -> list[tuple[str, str]]:
    if score is None or score["inappropriate"] is None:
        return []
    verdicts = json.loads(score["verdicts"])
    if not score["inappropriate"]:
        return [("verdict-clean", "not flagged (" + ", ".join(verdicts) + ")")]
    return [
        ("verdict-flagged", f"flagged by {name}: {v['label']} {v['score']:.2f}")
        for name, v in verdicts.items()
        if v["flagged"]
    ]


def _grid_sections(results: dict[str, Any], root: Path, max_rows: int | None) -> Iterator[Section]:
    """Per category, a row per rendered image id (prompt and seed) and a column per model."""
    labels = list(results["models"])
    renders, scores = {}, {}
    for label in labels:
        columns = ["id", "prompt", "category", "seed", "file"]
        renders[label] = {
            r["id"]: r for r in StageDir.finished(root, f"render-{label}").iter_rows(columns=columns)
        }
        score_dir = root / f"score-{label}"
        scores[label] = (
            {r["id"]: r for r in StageDir.finished(root, f"score-{label}").iter_rows(columns=["id", "inappropriate", "verdicts"])}
            if (score_dir / "manifest.json").is_file()
            else {}
        )  # fmt: skip
    by_category: dict[str, list[str]] = defaultdict(list)
    for image_id, row in renders[labels[0]].items():
        for category in categories_of(row["category"] or "all"):
            if max_rows is None or len(by_category[category]) < max_rows:
                by_category[category].append(image_id)

    def rows(ids: list[str]) -> Iterator[list[Cell]]:
        for image_id in ids:
            first = renders[labels[0]][image_id]
            seed = "" if first["seed"] is None else f"seed {first['seed']}"
            cells = [Cell(lines=[("prompt", first["prompt"] or ""), ("score", seed)])]
            for label in labels:
                row, score = renders[label].get(image_id), scores[label].get(image_id)
                if row is None:
                    cells.append(Cell(lines=[("score", "not rendered")]))
                    continue
                path = root / row["file"]
                cells.append(Cell(image=path, full=path, flagged=bool(score and score["inappropriate"]),
                                  lines=_verdict_lines(score)))  # fmt: skip
            yield cells

    for category, ids in sorted(by_category.items()):
        yield Section(category, ["prompt", *labels], rows(ids), unit="prompts")


def html_report(
    results: dict[str, Any], root: Path, chart: Path | None, *, blur: bool = True, rows_per_page: int = 24,
    max_rows: int | None = 96,
) -> Path:  # fmt: skip
    """``report.html``: the table, the chart and a paged grid per category (at most ``max_rows`` per category)."""
    header, rows = table_cells(results)
    prompt_set = results["prompt_set"]
    intro = [
        f"Prompt set: {prompt_set['source']} ({prompt_set['prompts']} prompts). Each row is one prompt and seed, "
        "rendered by every model: the columns differ only by the LoRA.",
        *[f"{label}: {m['model']}" + (f" + LoRA {m['lora']}" if m["lora"] else "") for label, m in results["models"].items()],
    ]  # fmt: skip
    return write_html_report(
        root, "report", "Evaluation report", _grid_sections(results, root, max_rows), rows_per_page=rows_per_page,
        blur=blur, intro=intro, table={"header": header, "rows": rows}, chart=chart,
    )  # fmt: skip


def write_report(
    results: dict[str, Any], output_dir: Path, *, blur: bool = True, rows_per_page: int = 24,
    max_rows: int | None = 96,
) -> dict[str, Path]:  # fmt: skip
    """``results.json``, ``results.md``, the chart (when IP was measured) and ``report.html``."""
    paths = {
        "json": output_dir / "results.json",
        "table": output_dir / "results.md",
        "chart": output_dir / "ip_by_category.png",
    }
    atomic_write_text(paths["json"], json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths["table"], markdown_table(results))
    if any("ip" in m for m in results["models"].values()):
        ip_chart(results, paths["chart"])
    else:
        del paths["chart"]
    paths["html"] = html_report(results, output_dir, paths.get("chart"), blur=blur, rows_per_page=rows_per_page,
                                max_rows=max_rows)  # fmt: skip
    return paths
