"""Materialization metadata that a person reads in the UI.

What Dagster 1.13 shows on a materialization page without a click: plain values (int, float,
text, bool), tables (`MetadataValue.table`: always inline), and Markdown or JSON under 1,000
characters; longer Markdown or JSON hides behind a `[Show Markdown]` / `[Show JSON]` link. So
figures are plain values, counts and sample rows are tables, and plots are small SVG images in
Markdown (a data URL the UI's sanitizer lets through), built to stay under that limit.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from lpt.records import Quarantined
from lpt_assets.generation import GenerationStats

INLINE_MARKDOWN_LIMIT = 1000  # the UI shows shorter Markdown inline, longer behind a link
_CELL_TYPES = {bool: "bool", int: "int", float: "float"}


def _cell(value: Any, width: int) -> str | int | float | bool | None:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], limit: int = 5, width: int = 200) -> MetadataValue:
    """A few rows as a table the UI shows inline; long cells are cut so it stays readable."""
    if not rows:
        return MetadataValue.text("no rows")
    columns = list(rows[0])
    schema = TableSchema(
        columns=[TableColumn(name, _CELL_TYPES.get(type(rows[0][name]), "string")) for name in columns]
    )
    records = [TableRecord({name: _cell(row[name], width) for name in columns}) for row in rows[:limit]]
    return MetadataValue.table(records, schema=schema)


def reason_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(r for r in reasons if r).items()))


def counts_table(counts: Mapping[str, int], name: str) -> MetadataValue:
    return table([{name: key, "rows": count} for key, count in counts.items()], limit=50)


def drop_metadata(quarantined: Sequence[Quarantined]) -> dict[str, Any]:
    return {
        "quarantined": len(quarantined),
        "drop_reasons": counts_table(reason_counts(q.reason for q in quarantined), "reason"),
    }


def first_lines(text: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[:lines] if line.strip())


# ---- plots: SVG small enough to show inline

_BAR = "#4c72b0"


def _svg_markdown(title: str, width: int, height: int, body: str) -> MetadataValue:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
        f'font-family="sans-serif">{body}</svg>'
    )
    encoded = base64.b64encode(svg.encode()).decode("ascii")
    markdown = f"![{title}](data:image/svg+xml;base64,{encoded})"
    if len(markdown) >= INLINE_MARKDOWN_LIMIT:  # a bug in the sizes below, not a data problem
        raise ValueError(f"plot {title!r} is {len(markdown)} characters: the UI would hide it")
    return MetadataValue.md(markdown)


def bar_chart(counts: Mapping[str, int], title: str, bars: int = 5) -> MetadataValue:
    """Horizontal bars, largest first, each named with its count; beyond `bars`, the rest are
    summed as "other"."""
    if not sum(counts.values()):
        return MetadataValue.text(f"{title}: nothing to plot")
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if len(ordered) > bars:
        ordered = ordered[: bars - 1] + [("other", sum(count for _, count in ordered[bars - 1 :]))]
    top = max(count for _, count in ordered)
    labels = "".join(
        f'<text y="{14 * i + 10}">{escape(label[:14])} {count}</text>' for i, (label, count) in enumerate(ordered)
    )
    widths = [max(round(140 * count / top), 1) for _, count in ordered]
    bars_path = "".join(f"M150 {14 * i + 2}h{w}v10h-{w}z" for i, w in enumerate(widths))
    return _svg_markdown(title, 300, 14 * len(ordered) + 2, f'{labels}<path fill="{_BAR}" d="{bars_path}"/>')


def histogram(values: Sequence[float], title: str, bins: int = 12) -> MetadataValue:
    """Counts in equal-width bins, with the range written under the bars."""
    if not values:
        return MetadataValue.text(f"{title}: nothing to plot")
    low, high = min(values), max(values)
    step = (high - low) / bins or 1
    counts = Counter(min(int((v - low) / step), bins - 1) for v in values)
    top = max(counts.values())
    heights = {b: max(round(56 * n / top), 1) for b, n in sorted(counts.items())}
    bins_path = "".join(f"M{20 * b} {60 - h}h18v{h}h-18z" for b, h in heights.items())
    body = (
        f'<path fill="{_BAR}" d="{bins_path}"/>'
        f'<text y="74">{low:g}</text><text x="{20 * bins}" y="74" text-anchor="end">{high:g}</text>'
    )
    return _svg_markdown(title, 20 * bins, 78, body)


# ---- engines

ENGINE_COUNTS = ("requests_sent", "cache_hits", "samples", "failed_requests", "prompt_tokens", "completion_tokens")
RUN_ENGINE_FIGURES = ("run_engine_seconds", "run_tokens_per_second", "run_estimated_cost_usd")


def engine_counts(stats: GenerationStats) -> dict[str, int]:
    """One shard's use of the engine: what it sent, what the cache answered, its tokens."""
    return {name: getattr(stats, name) for name in ENGINE_COUNTS}


def run_engine_figures(stats: GenerationStats) -> dict[str, float]:
    """Seconds, speed and cost belong to the run: its shards share the engine's time."""
    return dict(zip(RUN_ENGINE_FIGURES, (stats.engine_seconds, stats.tokens_per_second, stats.estimated_cost_usd)))


# ---- per shard


class ShardReport:
    """Each shard's own figures on that shard's own materialization.

    A range run materializes many shards in one step; metadata given to the step's
    `MaterializeResult` lands on every one of them. `add` records one shard's figures with
    `add_asset_metadata(partition_key=...)` instead, and `result` logs the range's totals (the
    sum of the shards' whole-number figures) on the run, attaching to every shard only what
    is true of the whole run (`run_wide`: the engine, how stage 2 perceived the image)."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self._context = context
        self._totals: Counter[str] = Counter()
        self._shards = 0

    def add(self, shard: str, metadata: Mapping[str, Any]) -> None:
        self._context.add_asset_metadata(dict(metadata), partition_key=shard)
        self._shards += 1
        for name, value in metadata.items():
            if isinstance(value, int) and not isinstance(value, bool):
                self._totals[name] += value

    def result(self, run_wide: Mapping[str, Any] | None = None) -> MaterializeResult:
        if self._shards > 1:
            asset = self._context.asset_key.to_user_string()
            totals = ", ".join(f"{name} {value:,}" for name, value in self._totals.items())
            self._context.log.info(f"{asset}: totals over the run's {self._shards} shards: {totals}")
        return MaterializeResult(metadata=dict(run_wide or {}))
