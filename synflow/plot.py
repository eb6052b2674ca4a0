"""`report.png`: the JSON report drawn, for people who want to see where the weights went.

One figure: a header with the overall sparsity, density and FLOPs ratio; the density after
each round (log scale, with the target); and one bar per layer with its density on a log scale,
its kept/total count beside it and layers pruned away entirely (collapsed) marked in red.

It reads only the report's JSON (the worker draws a report a sandboxed job wrote, so every value
is checked as it is read, and the layers and rounds drawn are capped). matplotlib is imported
when a report is drawn, never by `import synflow`, and only through its `Figure` API with the
Agg canvas: no pyplot state, no display, safe in threads.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from synflow.io.atomic import write_atomically

REPORT_PNG = "report.png"
#: layers drawn at most (a figure taller than this is unreadable anyway); the rest are counted
MAX_LAYERS = 600
#: rounds drawn at most: a curve needs no more points than it has pixels
MAX_ROUNDS = 2000
#: characters of a layer name shown; longer names keep their end, which tells layers apart
MAX_LABEL = 48
DPI = 100
WIDTH_INCHES = 12.0
HEADER_INCHES = 4.6  # title and totals, the curve, the bars' title
CURVE_INCHES = 2.6
BOTTOM_INCHES = 0.6  # the bars' axis label
LABEL_INCHES = 3.1  # layer names, left of the bars (MAX_LABEL characters at 8 pt)
COUNT_INCHES = 1.7  # kept / total, right of the bars
INCHES_PER_LAYER = 0.19
KEPT_COLOUR, COLLAPSED_COLOUR, TARGET_COLOUR = "#3b6fb6", "#c62828", "#888888"


class ReportError(ValueError):
    """The report lacks what the figure shows, or holds values of the wrong kind."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportError(f"{what} is not a finite number")
    return float(value)


def _label(name: Any) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return text if len(text) <= MAX_LABEL else "..." + text[-(MAX_LABEL - 3) :]


def _layers(report: dict[str, Any]) -> list[tuple[str, int, int]]:
    rows = report.get("layers")
    if not isinstance(rows, list):
        raise ReportError("the report has no layer table")
    layers = []
    for i, row in enumerate(rows[:MAX_LAYERS]):
        if not isinstance(row, dict):
            raise ReportError(f"layer {i} is not an object")
        total = int(_number(row.get("total"), f"layer {i} total"))
        kept = int(_number(row.get("kept"), f"layer {i} kept"))
        if total < 0 or not 0 <= kept <= total:
            raise ReportError(f"layer {i} keeps {kept} of {total}")
        layers.append((_label(row.get("name", f"layer {i}")), kept, total))
    return layers


def _history(report: dict[str, Any]) -> list[tuple[int, float]]:
    """(round, density) after each round; a long run is thinned (its last round kept)."""
    values = report.get("density_history") or []
    if not isinstance(values, list):
        raise ReportError("density_history is not a list")
    step = max(1, math.ceil(len(values) / MAX_ROUNDS))
    rounds = list(range(0, len(values), step))
    if values and rounds[-1] != len(values) - 1:
        rounds.append(len(values) - 1)
    return [(i + 1, _number(values[i], f"density_history[{i}]")) for i in rounds]


def _header(report: dict[str, Any]) -> str:
    totals = report.get("totals") if isinstance(report.get("totals"), dict) else {}
    sparsity = _number(totals.get("sparsity"), "totals.sparsity")
    kept, prunable = (
        int(_number(totals.get("kept"), "kept")),
        int(_number(totals.get("prunable"), "prunable")),
    )
    flops = report.get("flops")
    if isinstance(flops, dict) and flops.get("ratio") is not None:
        ratio = _number(flops["ratio"], "flops.ratio")
        flops_text = f"FLOPs ratio {ratio:.4f} (pruned / dense)"
    else:
        flops_text = "FLOPs not counted"
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    method = _label(config.get("method", "?"))
    return (
        f"sparsity {sparsity:.4%}   kept {kept:,} of {prunable:,} prunable weights "
        f"(density {1 - sparsity:.4g})   {flops_text}\n"
        f"method {method}, {_label(report.get('format', '?'))} model, "
        f"precision {_label(report.get('precision', '?'))}"
    )


def draw(report: dict[str, Any]):
    """The report as a matplotlib Figure (raises ReportError for a report it cannot draw)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not isinstance(report, dict):
        raise ReportError("the report is not a JSON object")
    layers = _layers(report)
    history = _history(report)
    header = _header(report)
    all_rows = len(report["layers"])

    # a fixed layout in inches (a layout engine measures every label again: 40% of the time)
    bars_inches = max(0.6, INCHES_PER_LAYER * len(layers))
    height = HEADER_INCHES + bars_inches + BOTTOM_INCHES
    fig = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI)
    fig.suptitle(f"SynFlow pruning report\n{header}", fontsize=11, y=1 - 0.1 / height)

    def box(left: float, top: float, right: float, tall: float) -> list[float]:
        """An axes rectangle from margins in inches (top: from the figure's top edge)."""
        return [left / WIDTH_INCHES, 1 - (top + tall) / height,
                1 - (left + right) / WIDTH_INCHES, tall / height]  # fmt: skip

    curve = fig.add_axes(box(1.2, 1.0, 0.6, CURVE_INCHES))
    if history:
        rounds, values = zip(*history, strict=True)
        curve.plot(rounds, values, marker="o" if len(values) <= 30 else None, color=KEPT_COLOUR)
        curve.axhline(values[-1], color=TARGET_COLOUR, linestyle="--", linewidth=1)
        if len(values) > 1 and min(values) > 0:
            curve.set_yscale("log")
        if len(values) == 1:  # one round (magnitude, random): one tick, not fractions
            curve.set_xticks(rounds)
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.set_xlabel("round")
    curve.set_ylabel("density (kept / prunable)")
    curve.set_title("density after each round", fontsize=11)
    curve.grid(True, which="both", alpha=0.3)

    bars = fig.add_axes(box(LABEL_INCHES, HEADER_INCHES, COUNT_INCHES, bars_inches))
    positions = list(range(len(layers)))
    densities = [kept / total if total else 1.0 for _, kept, total in layers]
    positive = [d for d in densities if d > 0]
    floor = min(positive) / 2 if positive else 1e-6
    colours = [KEPT_COLOUR if d > 0 else COLLAPSED_COLOUR for d in densities]
    bars.barh(positions, [d if d > 0 else floor for d in densities], color=colours, height=0.7)
    collapsed = [p for p, d in zip(positions, densities, strict=True) if d == 0]
    if collapsed:  # nothing to draw on a log scale: a red cross at its left edge instead
        bars.scatter([floor * 1.25] * len(collapsed), collapsed, marker="x", color=COLLAPSED_COLOUR)
    bars.set_xscale("log")
    bars.set_xlim(floor, 1.0)
    bars.set_ylim(len(layers) - 0.5, -0.5)  # first layer on top
    bars.set_yticks(positions, [name for name, _, _ in layers], fontsize=8)
    for tick, density in zip(bars.get_yticklabels(), densities, strict=True):
        if density == 0:
            tick.set_color(COLLAPSED_COLOUR)
    counts = bars.twinx()
    counts.set_ylim(bars.get_ylim())
    counts.set_yticks(
        positions,
        [f"{kept:,} / {total:,}" + ("  collapsed" if total and not kept else "")
         for _, kept, total in layers],
        fontsize=8,
    )  # fmt: skip
    for tick, density in zip(counts.get_yticklabels(), densities, strict=True):
        if density == 0:
            tick.set_color(COLLAPSED_COLOUR)
    shown = f" (first {len(layers)} of {all_rows})" if all_rows > len(layers) else ""
    bars.set_title(
        f"density per layer{shown}, log scale; right: kept / total; red: collapsed (0 kept)",
        fontsize=11,
    )
    bars.set_xlabel("density (kept / total)")
    bars.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def report_png(report: dict[str, Any]) -> bytes:
    """The report drawn, as PNG bytes."""
    buffer = io.BytesIO()
    draw(report).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_report_png(report: dict[str, Any], path: str | Path) -> Path:
    """Draw the report into `path` (complete or not at all, the artifacts' file mode)."""
    data = report_png(report)
    write_atomically(Path(path), lambda tmp: tmp.write_bytes(data))
    return Path(path)
