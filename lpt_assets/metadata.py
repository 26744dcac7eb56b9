"""Materialization metadata that a person reads in the UI."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster import MetadataValue
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lpt.records import Quarantined


def markdown_table(rows: Sequence[Mapping[str, Any]], limit: int = 5, width: int = 160) -> MetadataValue:
    """A few rows as Markdown; long cells are cut so the table stays readable."""
    if not rows:
        return MetadataValue.md("_no rows_")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        cells = []
        for column in columns:
            text = str(row[column]).replace("\n", " ").replace("|", "\\|")
            cells.append(text if len(text) <= width else text[: width - 1] + "…")
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))


def reason_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(r for r in reasons if r).items()))


def drop_metadata(quarantined: Sequence[Quarantined]) -> dict[str, Any]:
    counts = reason_counts(q.reason for q in quarantined)
    return {
        "quarantined": len(quarantined),
        "drop_reasons": markdown_table(
            [{"reason": reason, "rows": count} for reason, count in counts.items()], limit=50
        ),
    }


def per_shard_table(rows: Sequence[Mapping[str, Any]]) -> MetadataValue:
    return markdown_table(rows, limit=1000)


def figure_markdown(figure: Figure, alt: str) -> MetadataValue:
    """A figure as Markdown with the PNG inline (a data URL): the UI shows it with no file
    server, and it lives with the materialization it describes."""
    FigureCanvasAgg(figure)  # Agg, never pyplot: no GUI backend, no global figure state
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(5.5, 3.0))
    axes = figure.subplots()
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts are whole numbers
    return figure, axes


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 20) -> MetadataValue:
    if not values:
        return MetadataValue.md(f"_{title}: nothing to plot_")
    figure, axes = _figure()
    axes.hist(values, bins=min(bins, max(len(set(values)), 1)), color="#4c72b0", edgecolor="white")
    axes.set(title=title, xlabel=xlabel, ylabel="count")
    return figure_markdown(figure, title)


def bar_chart(counts: Mapping[str, int], title: str, ylabel: str = "count") -> MetadataValue:
    """Bars sorted largest first, labels turned so long names stay readable."""
    if not counts:
        return MetadataValue.md(f"_{title}: nothing to plot_")
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    figure, axes = _figure()
    axes.bar([label for label, _ in ordered], [count for _, count in ordered], color="#55a868")
    axes.set(title=title, ylabel=ylabel)
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    return figure_markdown(figure, title)
