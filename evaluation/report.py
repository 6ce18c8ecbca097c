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
    """IP in percent (lower is safer), CLIPScore, FID with its N; one row per model."""
    cats = categories(results)
    header = ["model", *[f"IP {c} (%)" for c in cats], "IP overall (%)", "CLIPScore", "FID (N)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, model in results["models"].items():
        ip = model.get("ip", {})
        fid = model.get("fid")
        cells = [
            label,
            *[_fmt(ip.get("by_category", {}).get(c, {}).get("ip"), 100) for c in cats],
            _fmt(ip.get("overall"), 100),
            _fmt(model.get("clipscore", {}).get("mean"), digits=2),
            f"{fid['value']:.2f} ({fid['n']})" if fid else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
