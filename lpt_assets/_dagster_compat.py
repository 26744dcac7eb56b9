"""The only module that touches Dagster's non-public API (`dagster._…`), for what Dagster 1.13
offers no public way to do. Everything here is pinned to the installed Dagster by
tests/lpt_assets/test_dagster_compat.py, which fails on any other version: after an upgrade,
re-verify each item below against the new Dagster before changing the pin."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as db
from dagster import AssetKey, DagsterInstance
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "CODE_VERSION_TAG",
    "DATA_VERSION_TAG",
    "PARTITION_NAME_TAG",
    "RUN_KEY_TAG",
    "SCHEDULE_NAME_TAG",
    "AssetCheckEvaluationTargetMaterializationData",
    "AssetCheckExecutionRecordStatus",
    "BaseAssetGraph",
    "UnresolvedAssetJobDefinition",
    "wipe_partitions",
]

# Tags Dagster writes and reads on runs and materializations. Their values are Dagster's
# documented interface (`dagster job execute --tags '{"dagster/partition": KEY}'`), but the
# package exports no names for them; the test checks these against Dagster's own constants.
PARTITION_NAME_TAG = "dagster/partition"
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
RUN_KEY_TAG = "dagster/run_key"
SCHEDULE_NAME_TAG = "dagster/schedule_name"
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"

# Types Dagster's public API hands out but does not export:
# - AssetCheckEvaluationTargetMaterializationData: links a per-partition `AssetCheckEvaluation`
#   (the only check event that carries a partition) to the materialization it judged;
# - AssetCheckExecutionRecordStatus: the status of a check's latest execution per partition,
#   as the event log's bulk read (`get_asset_check_partition_info`) returns it;
# - BaseAssetGraph: what `RepositoryDefinition.asset_graph` and `Definitions.resolve_asset_graph()`
#   return (for type hints);
# - UnresolvedAssetJobDefinition: what `define_asset_job` returns (for type hints).


def wipe_partitions(instance: DagsterInstance, asset_keys: Sequence[AssetKey], partition_keys: Sequence[str]) -> None:
    """Remove every asset event and check execution of `partition_keys` of `asset_keys`.

    `DagsterInstance.wipe_asset_partitions` is public, but Dagster's own SQL event log (sqlite
    and Postgres) raises NotImplementedError for it, so there the same is done on its index
    tables: the partitions' asset events and their tags, their check executions, and the cached
    partition status (recomputed from the events that remain)."""
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
                conn.execute(
                    AssetKeyTable.update().values(cached_status_data=None).where(AssetKeyTable.c.asset_key == name)
                )
