"""The one non-public Dagster call lpt makes on an instance's storage: forgetting some partitions
of an asset. `DagsterInstance.wipe_asset_partitions` is public, but Dagster's own SQL event log
(sqlite and Postgres) raises NotImplementedError for it, so there the same is done on its index
tables: the partitions' asset events and their tags, their check executions, and the cached
partition status (recomputed from the events that remain). tests/test_instance_compat.py pins
the behaviour against the installed Dagster."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as db
from dagster import AssetKey, DagsterInstance
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage


def wipe_partitions(instance: DagsterInstance, asset_keys: Sequence[AssetKey], partition_keys: Sequence[str]) -> None:
    """Remove every asset event and check execution of `partition_keys` of `asset_keys`."""
    if not partition_keys:
        return
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        for asset_key in asset_keys:
            instance.wipe_asset_partitions(asset_key, partition_keys)
        return
    # asked before the connection opens: each opens its own, and sqlite's storage serializes them
    has_checks = storage.has_table(AssetCheckExecutionsTable.name)
    has_status_cache = storage.can_read_asset_status_cache()
    with storage.index_connection() as conn:
        for asset_key in asset_keys:
            name = asset_key.to_string()
            events = db.select(SqlEventLogStorageTable.c.id).where(
                SqlEventLogStorageTable.c.asset_key == name, SqlEventLogStorageTable.c.partition.in_(partition_keys)
            )
            conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(events)))
            conn.execute(
                SqlEventLogStorageTable.delete().where(
                    SqlEventLogStorageTable.c.asset_key == name, SqlEventLogStorageTable.c.partition.in_(partition_keys)
                )
            )
            if has_checks:
                conn.execute(
                    AssetCheckExecutionsTable.delete().where(
                        AssetCheckExecutionsTable.c.asset_key == name,
                        AssetCheckExecutionsTable.c.partition.in_(partition_keys),
                    )
                )
            if has_status_cache:
                conn.execute(AssetKeyTable.update().values(cached_status_data=None).where(AssetKeyTable.c.asset_key == name))
