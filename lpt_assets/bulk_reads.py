"""The few reads of the instance that tell which shards need work, whatever their number.

Dagster's public API answers one asset partition (or one check of one partition) at a time; a
schedule tick at 16k shards cannot afford that. These functions read a whole asset, or every
check, in one query each. The event-log storage methods they call (Dagster 1.13, on any SQL
storage) are called here and nowhere else, and the names Dagster does not export come from
_dagster_compat.py; tests/lpt_assets/test_bulk_reads.py runs them on sqlite and on Postgres, so
an upgrade that changes them fails there first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
)
from pydantic import BaseModel, ConfigDict

from lpt_assets._dagster_compat import CODE_VERSION_TAG, DATA_VERSION_TAG, AssetCheckExecutionRecordStatus

# A data version is a hash that includes the code version that made it (Dagster's logical
# data versions), so what it maps to never changes: remembered for the life of the process
# (the code server's, for the daemon's ticks).
_CODE_VERSIONS: dict[tuple[AssetKey, str], str | None] = {}
_BATCH = 500  # storage ids per query: well below any database's limit on bound parameters
# below this many shards, the check reads name them; above, they read every partition once
_NAMED_PARTITIONS_LIMIT = 1000


class Latest(BaseModel):
    """The latest materialization of one asset partition: its storage id (which orders it
    against its parents') and its data version."""

    model_config = ConfigDict(frozen=True)
    storage_id: int
    data_version: str | None


def latest_materializations(instance: DagsterInstance, asset: AssetKey) -> dict[str, Latest]:
    """partition -> its latest materialization, for every partition of `asset` (two queries)."""
    storage = instance.event_log_storage
    ids = storage.get_latest_storage_id_by_partition(asset, DagsterEventType.ASSET_MATERIALIZATION)
    tags = storage.get_latest_tags_by_partition(asset, DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG])
    return {
        partition: Latest(storage_id=storage_id, data_version=tags.get(partition, {}).get(DATA_VERSION_TAG))
        for partition, storage_id in ids.items()
    }


def code_versions_of(instance: DagsterInstance, asset: AssetKey, latest: Iterable[Latest]) -> dict[str, str | None]:
    """data version -> the code version that made it, for the data versions in `latest`: one
    materialization read per data version this process has not seen (a few per run, not one
    per shard)."""
    latest = list(latest)
    wanted: dict[str, int] = {}
    for record in latest:
        if record.data_version is not None and (asset, record.data_version) not in _CODE_VERSIONS:
            wanted.setdefault(record.data_version, record.storage_id)
    ids = sorted(set(wanted.values()))
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset, storage_ids=batch), limit=len(batch)
        )
        for event in result.records:
            tags = (event.asset_materialization and event.asset_materialization.tags) or {}
            if DATA_VERSION_TAG in tags:  # the event's own version: right even if a newer one came since
                _CODE_VERSIONS[(asset, tags[DATA_VERSION_TAG])] = tags.get(CODE_VERSION_TAG)
    return {
        record.data_version: _CODE_VERSIONS[(asset, record.data_version)]
        for record in latest
        if record.data_version is not None and (asset, record.data_version) in _CODE_VERSIONS
    }


def materialization_metadata(
    instance: DagsterInstance, asset: AssetKey, storage_ids: Collection[int]
) -> dict[int, Mapping]:
    """storage id -> the metadata of that materialization (a bounded number of queries)."""
    ids = sorted(storage_ids)
    found: dict[int, Mapping] = {}
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset, storage_ids=batch), limit=len(batch)
        )
        found.update(
            {
                event.storage_id: event.asset_materialization.metadata
                for event in result.records
                if event.asset_materialization
            }
        )
    return found


def registered_among(instance: DagsterInstance, partitions_def: str, keys: Sequence[str]) -> set[str]:
    """Those of `keys` already registered: one query bounded by `keys` (not every key)."""
    return set(instance.get_existing_dynamic_partitions(partitions_def, keys))


def latest_check_failures(
    instance: DagsterInstance, checks: Sequence[AssetCheckKey], partitions: Sequence[str] | None = None
) -> dict[str, list[tuple[AssetCheckKey, str]]]:
    """partition -> (check, run id) for each check whose latest evaluation of it failed: one
    query per check over all partitions (or over `partitions`, when there are few of them)."""
    named = list(partitions) if partitions is not None and len(partitions) <= _NAMED_PARTITIONS_LIMIT else None
    infos = instance.event_log_storage.get_asset_check_partition_info(list(checks), partition_keys=named)
    wanted = set(partitions) if partitions is not None else None
    failed: dict[str, list[tuple[AssetCheckKey, str]]] = {}
    for info in infos:
        if info.partition_key is None or (wanted is not None and info.partition_key not in wanted):
            continue
        if info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED:
            failed.setdefault(info.partition_key, []).append((info.check_key, info.latest_planned_run_id))
    return failed
