"""The run's report: ``results.json`` (every number with what produced it), ``results.md`` (the paper's
table: a row per model, IP per category and overall, CLIPScore, FID) and ``ip_by_category.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coprov2.stage_io import atomic_write_text


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def categories(results: dict[str, Any]) -> list[str]:
    names = set()
    for model in results["models"].values():
        names |= set(model.get("ip", {}).get("by_category", {}))
    return sorted(names)


def markdown_table(results: dict[str, Any]) -> str:
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
    lines = ["| model | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for label, model in results["models"].items():
        lines.append(f"| {label} | " + " | ".join(cell(model) for _, cell in columns) + " |")
    return "\n".join(lines) + "\n"


def ip_chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: IP per category (and overall) per model, the figure a paper shows."""
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
    axis.set_ylabel("inappropriate probability (%)")
    axis.set_title(f"IP per category on {results['prompt_set']['source']}")
    axis.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=150)
    plt.close(figure)
    tmp.replace(path)


def write_report(results: dict[str, Any], output_dir: Path) -> dict[str, Path]:
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
    return paths
