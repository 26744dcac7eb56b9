"""Captions: the registered shard's items, checked, with a quarantine of the bad ones."""

from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetMaterialization, BackfillPolicy, MaterializeResult, asset

from lpt.records import Quarantined, stable_id
from lpt.tables import CAPTIONS, CAPTIONS_QUARANTINE, Table
from lpt_assets.metadata import ShardReport, drop_metadata, table
from lpt_assets.partitions import shards
from lpt_assets.registry import SHARD_MANIFEST
from lpt_resources.captions.validate import CaptionLimits, check_shard
from lpt_resources.storage import ParquetStore

LIMITS = CaptionLimits()
CAPTIONS_VERSION = f"captions-3-{stable_id(LIMITS.model_dump_json())[:8]}"  # bump when validate.py's rules change
USABLE_VERSION = "usable-1"


def quarantine_written(context: AssetExecutionContext, quarantine: Table[Quarantined], shard: str, rows: int) -> None:
    """A shard's quarantine table, written, as the catalog shows it (its own asset, whose
    producer writes it): every producer, captions and the stages alike, records it this way."""
    context.log_event(AssetMaterialization(quarantine.name, partition=shard, metadata={"dagster/row_count": rows}))


@asset(
    name=CAPTIONS.name,
    partitions_def=shards,
    backfill_policy=BackfillPolicy.single_run(),
    code_version=CAPTIONS_VERSION,
    group_name="ingest",
    kinds={"parquet"},
)
def captions(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
    """Images with their dense descriptions, each image checked to exist, decode and fit."""
    report = ShardReport(context)
    for key in context.partition_keys:
        items = store.read(SHARD_MANIFEST, key)
        good, bad = check_shard(items, LIMITS)
        store.write(CAPTIONS, key, good)
        store.write(CAPTIONS_QUARANTINE, key, bad)
        quarantine_written(context, CAPTIONS_QUARANTINE, key, len(bad))
        report.add(
            key,
            {
                "rows_in": len(items),
                "rows_out": len(good),
                **drop_metadata(bad),
                "quarantined_rows": table(
                    [{"item_id": q.item_id, "reason": q.reason, "detail": q.detail} for q in bad], limit=20
                ),
                "sample_rows": table(
                    [
                        {"image_id": c.image_id, "size": f"{c.width}x{c.height}", "description": c.description}
                        for c in good
                    ]
                ),
            },
        )
    return report.result()


@asset(
    partitions_def=shards,
    backfill_policy=BackfillPolicy.single_run(),
    code_version=USABLE_VERSION,
    group_name="ingest",
    deps=[captions],
    output_required=False,
)
def usable_captions(context: AssetExecutionContext, store: ParquetStore) -> Iterator[MaterializeResult]:
    """The gate to the GPU stages: a run whose shards hold no usable caption materializes
    nothing here, so Dagster skips every generation step of the run instead of queueing it for
    the `gpu` pool to write empty tables. A run with any usable caption passes all its shards."""
    counts = {key: store.count(CAPTIONS, key) for key in context.partition_keys}
    if not any(counts.values()):
        context.log.info(f"no usable captions in {', '.join(counts)}: generation is skipped")
        return
    report = ShardReport(context)
    for key, rows in counts.items():
        report.add(key, {"usable_captions": rows})
    yield report.result()
