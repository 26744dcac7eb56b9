"""Materialization metadata that a person reads in the UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster import MetadataValue

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
