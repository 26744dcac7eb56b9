"""The metadata helpers: what they build is what the UI shows without a click (tables, plain
values, Markdown under 1,000 characters), and the plots are SVG a browser can read."""

import base64
import re
import xml.etree.ElementTree as ElementTree

from dagster import MarkdownMetadataValue, TableMetadataValue, TextMetadataValue

from lpt_assets.metadata import INLINE_MARKDOWN_LIMIT, bar_chart, histogram, table

SVG = "{http://www.w3.org/2000/svg}"


def _svg(value: MarkdownMetadataValue) -> ElementTree.Element:
    markdown = value.value
    prefix, _, rest = markdown.partition("(data:image/svg+xml;base64,")
    assert prefix.startswith("![") and rest.endswith(")"), markdown[:80]
    return ElementTree.fromstring(base64.b64decode(rest[:-1], validate=True))


def _shapes(svg: ElementTree.Element) -> list[tuple[int, ...]]:
    """The path's boxes as numbers: (x, y, first side, second side) per "Mx yhAvBh-Az"."""
    d = svg.find(f"{SVG}path").get("d")
    return [tuple(int(n) for n in re.findall(r"-?\d+", box))[:4] for box in d.split("M")[1:]]


def test_bar_chart_stays_inline_even_with_many_long_labels() -> None:
    counts = {f"a very long drop reason number {i} <&>": 10**6 + i for i in range(40)}
    chart = bar_chart(counts, "reasons")
    assert isinstance(chart, MarkdownMetadataValue) and len(chart.value) < INLINE_MARKDOWN_LIMIT
    svg = _svg(chart)
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert len(labels) == 5 and labels[0] == "a very long dr 1000039" and labels[-1].startswith("other ")
    widths = [box[2] for box in _shapes(svg)]  # "other" sums 36 reasons: the longest bar
    assert widths[-1] == 140 and widths[0] == max(widths[:-1]) < 140
    assert bar_chart({}, "reasons") == TextMetadataValue("reasons: nothing to plot")


def test_histogram_bins_counts_and_names_its_range() -> None:
    values = [1] * 5 + [50] * 2 + [100]
    plot = histogram(values, "tokens", bins=10)
    assert len(plot.value) < INLINE_MARKDOWN_LIMIT
    svg = _svg(plot)
    heights = [box[3] for box in _shapes(svg)]
    assert len(heights) == 3 and heights[0] == max(heights) > heights[1] > heights[2] > 0
    assert [t.text for t in svg.iter(f"{SVG}text")] == ["1", "100"]
    assert histogram([7, 7, 7], "tokens").value.startswith("![tokens]")  # one value: one bin


def test_table_is_typed_cut_and_limited() -> None:
    rows = [{"question": "q" * 500, "rows": i, "rate": 0.5, "kept": True, "label": None} for i in range(9)]
    value = table(rows, limit=3, width=40)
    assert isinstance(value, TableMetadataValue)
    assert [c.type for c in value.schema.columns] == ["string", "int", "float", "bool", "string"]
    assert len(value.records) == 3
    assert value.records[0].data["question"] == "q" * 39 + "…" and value.records[2].data["rows"] == 2
    assert table([], limit=3) == TextMetadataValue("no rows")
