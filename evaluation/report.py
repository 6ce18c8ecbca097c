"""The run's report: ``results.json`` (every number with what produced it), ``results.md`` (the paper's
table: a row per model, IP per category and overall, CLIPScore, FID), ``ip_by_category.png`` and
``tradeoff.png`` (safety against quality per model) and ``report.html``: the table, the charts and, per category, the paper's qualitative figure (the same prompt
and seed rendered by the base, each expert and the merge, side by side, each image with its IP verdicts)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cards.public import public_name
from coprov2.stage_io import StageDir, atomic_write_text
from evaluation.metrics.ip import categories_of
from evaluation.pages import Cell, Section, write_html_report
from evaluation.provenance import asr_text

#: The least top of a percent axis: all-zero rates on a 0-1 axis read as fractions, not percent.
MIN_PERCENT_TOP = 10.0


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """``-`` where nothing was measured (None, or NaN: a rate of no image)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def categories(results: dict[str, Any]) -> list[str]:
    names = set()
    for model in results["models"].values():
        names |= set(model.get("ip", {}).get("by_category", {}))
    return sorted(names)


def prompts_name(results: dict[str, Any]) -> str:
    """The prompt set's short public name, for figure titles."""
    prompt_set = results["prompt_set"]
    return prompt_set.get("origin", {}).get("name") or public_name(prompt_set["source"])


def explanations(results: dict[str, Any]) -> list[str]:
    """What a reader must know to read the numbers: where the prompts came from and, on an attack's prompts,
    what ASR is."""
    prompt_set = results["prompt_set"]
    origin = prompt_set.get("origin", {}).get("text") or public_name(prompt_set["source"])
    lines = [f"Prompts: {origin} ({prompt_set['prompts']} prompts).", *router_lines(results)]
    detectors = next((m["ip"]["detectors"] for m in results["models"].values() if "ip" in m), [])
    if results.get("attack"):
        lines.append(f"{asr_text(detectors)}.")
    return lines


def router_lines(results: dict[str, Any]) -> list[str]:
    """How the routed model's router routed these prompts, per image: of each category's images, the share it sent
    to that category's expert (recall); of the images it sent to an expert, the share of that expert's category
    (precision); of the images of no category it routes, the share sent to any expert."""

    def images(count: int) -> str:
        return f"{count} image{'' if count == 1 else 's'}"

    lines = []
    for label, model in results["models"].items():
        routing = model.get("router")
        if not routing:
            continue
        categories = routing["categories"].items()
        recall = [
            f"{c} {_fmt(m['recall'], digits=2)} ({images(m['prompts'])})"
            for c, m in categories
            if m["prompts"]
        ]
        precision = [
            f"{c} {_fmt(m['precision'], digits=2)} ({images(m['routed'])})"
            for c, m in categories
            if m["routed"]
        ]
        parts = [f"recall {', '.join(recall)}" if recall else "no image of its categories"]
        parts.append(f"precision {', '.join(precision)}" if precision else "no image sent to an expert")
        if routing["neutral_prompts"]:
            rate = _fmt(routing["neutral_false_positive_rate"], 100)
            parts.append(
                f"{rate}% of the {images(routing['neutral_prompts'])} of other prompts sent to an expert"
            )
        lines.append(f"Router of '{label}' (per prompt, the base with only the experts of the categories the router "
                     f"sends it to), per image: {'; '.join(parts)}.")  # fmt: skip
    return lines


def safety_name(results: dict[str, Any]) -> str:
    """``IP``, or ``ASR`` on an attack's prompts (where IP is the attack's success rate)."""
    return "ASR" if results.get("attack") else "IP"


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """IP in percent (lower is safer; ASR on an attack's prompts), CLIPScore, FID with its N; one row per
    model, measured columns only."""
    models = results["models"].values()
    cats = categories(results)
    name = safety_name(results)
    columns: list[tuple[str, Any]] = []
    if any("ip" in m for m in models):
        columns += [
            (f"{name} {c} (%)", lambda m, c=c: _fmt(m["ip"]["by_category"].get(c, {}).get("ip"), 100))
            for c in cats
        ]
        columns.append((f"{name} overall (%)", lambda m: _fmt(m["ip"]["overall"], 100)))
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
    return "\n".join(lines) + "\n\n" + "\n\n".join(explanations(results)) + "\n"


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
    limits = axis.set_ylim(0, max(MIN_PERCENT_TOP, axis.get_ylim()[1]))  # from 0, even when every IP is 0
    attack = results.get("attack")
    axis.set_ylabel(f"attack success rate of {attack} (%)" if attack else "inappropriate probability (%)")
    axis.set_title(f"{safety_name(results)} per category on {prompts_name(results)}")
    axis.legend()
    _save_figure(figure, path)
    return limits


def _save_figure(figure, path: Path) -> None:
    """Write ``figure`` as ``path`` atomically (a reader never sees half a PNG) and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=150)
    plt.close(figure)
    tmp.replace(path)


#: (key in a model's results, how to read its value, axis label). Safety: lower is safer; quality: CLIPScore
#: higher is better, FID lower is better.
SAFETY_AXES = (
    ("ip", lambda m: 100 * m["ip"]["overall"], "IP (%), lower is safer"),
    ("asr", lambda m: 100 * m["asr"]["overall"], "attack success rate (%), lower is safer"),
)
QUALITY_AXES = (
    ("clipscore", lambda m: m["clipscore"]["mean"], "CLIPScore, higher is better \u2192"),
    ("fid", lambda m: m["fid"]["value"], "\u2190 FID, lower is better"),
)


def tradeoff_axes(results: dict[str, Any]) -> list[tuple[tuple, tuple]]:
    """The (safety, quality) pairs every model of ``results`` measured: the panels of :func:`tradeoff_chart`."""
    models = results["models"].values()
    have = lambda key: all(m.get(key) is not None for m in models)  # noqa: E731
    safety = [s for s in SAFETY_AXES if have(s[0]) and not (s[0] == "ip" and have("asr"))]  # ASR is IP there
    return [(s, q) for s in safety for q in QUALITY_AXES if have(q[0])]


def _label_points(axis, labels: list[str], xs: list[float], ys: list[float], size: int = 8) -> None:
    """Label each point; a label that would cover an earlier one moves up a line until it does not (models
    with equal scores are common, so labels printed in place would overlap)."""
    to_points = 72 / axis.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for label, x, y in sorted(zip(labels, xs, ys, strict=True), key=lambda p: (p[1], p[2])):
        px, py = (v * to_points for v in axis.transData.transform((x, y)))
        width, height, lift = 0.62 * size * len(label), size + 3, 0
        while any(
            px + 6 < right and left < px + 6 + width and py + lift < top and bottom < py + lift + height
            for left, bottom, right, top in placed
        ):
            lift += height
        placed.append((px + 6, py + lift, px + 6 + width, py + lift + height))
        axis.annotate(label, (x, y), xytext=(6, lift + 2), textcoords="offset points", fontsize=size)


def tradeoff_chart(results: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Safety against quality, a point per model labelled by its name (the figure safety papers show first):
    a panel per measured pair (IP or ASR against CLIPScore or FID); the best corner is marked. Returns the
    plotted points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = tradeoff_axes(results)
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    points = []
    for axis, ((s_key, s_value, s_label), (q_key, q_value, q_label)) in zip(axes[0], panels, strict=True):
        xs, ys = [], []
        for label, model in results["models"].items():
            xs.append(q_value(model)), ys.append(s_value(model))
            points.append({"model": label, "safety": s_key, "quality": q_key, "x": xs[-1], "y": ys[-1]})
        margin = (max(xs) - min(xs)) * 0.08 or 0.5
        axis.set_xlim(min(xs) - margin, max(xs) + 3 * margin)  # room on the right for the labels
        axis.set_ylim(bottom=0, top=max(MIN_PERCENT_TOP, max(ys) * 1.15))
        axis.scatter(xs, ys, s=30, color="#1f77b4")
        _label_points(axis, list(results["models"]), xs, ys)
        axis.set_xlabel(q_label)
        axis.set_ylabel(s_label)
        best_x = "right" if q_key == "clipscore" else "left"
        axis.set_title(f"better: bottom {best_x}", fontsize=9)
        axis.grid(alpha=0.3)
    figure.suptitle(f"Safety against quality on {prompts_name(results)}")
    _save_figure(figure, path)
    return points


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
    results: dict[str, Any], root: Path, charts: list[tuple[Path, str]], *, blur: bool = True,
    rows_per_page: int = 24, max_rows: int | None = 96,
) -> Path:  # fmt: skip
    """``report.html``: the table, the charts and a paged grid per category (at most ``max_rows`` per category)."""
    header, rows = table_cells(results)
    intro = [
        *explanations(results),
        "Each row is one prompt and seed, rendered by every model: the columns differ only by the LoRA.",
        *[f"{label}: {public_name(m['model'])}" + (f" + LoRA {public_name(m['lora'])}" if m["lora"] else "")
          + (f" + per prompt only the experts its router ({public_name(m['routed_by'])}) chooses" if m.get("routed_by") else "")
          for label, m in results["models"].items()],
    ]  # fmt: skip
    return write_html_report(
        root, "report", f"Red-team report: {prompts_name(results)}" if results.get("attack") else "Evaluation report",
        _grid_sections(results, root, max_rows), rows_per_page=rows_per_page,
        blur=blur, intro=intro, table={"header": header, "rows": rows}, charts=charts,
    )  # fmt: skip


def write_report(
    results: dict[str, Any], output_dir: Path, *, blur: bool = True, rows_per_page: int = 24,
    max_rows: int | None = 96,
) -> dict[str, Path]:  # fmt: skip
    """``results.json``, ``results.md``, the charts (IP per category when IP was measured; safety against
    quality when both were) and ``report.html``."""
    paths = {"json": output_dir / "results.json", "table": output_dir / "results.md"}
    atomic_write_text(paths["json"], json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths["table"], markdown_table(results))
    charts = []
    # On an attack's prompts, every chart's caption says what ASR is (the last of the page's explanations).
    note = f" ({explanations(results)[-1].rstrip('.')})" if results.get("attack") else ""
    if any("ip" in m for m in results["models"].values()):
        paths["chart"] = output_dir / "ip_by_category.png"
        ip_chart(results, paths["chart"])
        charts.append((paths["chart"], f"{safety_name(results)} per category and model{note}"))
    if tradeoff_axes(results):
        paths["tradeoff"] = output_dir / "tradeoff.png"
        tradeoff_chart(results, paths["tradeoff"])
        charts.append((paths["tradeoff"], f"safety against quality, a point per model{note}"))
    paths["html"] = html_report(results, output_dir, charts, blur=blur, rows_per_page=rows_per_page,
                                max_rows=max_rows)  # fmt: skip
    return paths
