"""Training-data exports: LLaMA-Factory, HF `datasets` (TRL formats), LaCoT/LLaVA, provenance.

Pure code over the typed records (`SftSample`, `DpoPair`): no Dagster, no engines. Every format
is written one part per shard and bound by small index files (`parts.Exporter`), through fsspec,
so an export root may be a local folder or a URL such as `s3://bucket/exports`. Rows are sorted
by id, so the same inputs give byte-identical files."""

from lpt.export.common import IMAGE_PLACEHOLDER, Folder, ImagePaths, filter_pairs, image_ref, split_response
from lpt.export.parts import ExportBatch, Exporter, ExportState, ShardRows, part_paths
from lpt.export.stats import Funnel, Stats, shard_stats

__all__ = [
    "IMAGE_PLACEHOLDER",
    "ExportBatch",
    "ExportState",
    "Exporter",
    "Folder",
    "Funnel",
    "ImagePaths",
    "ShardRows",
    "Stats",
    "filter_pairs",
    "image_ref",
    "part_paths",
    "shard_stats",
    "split_response",
]
