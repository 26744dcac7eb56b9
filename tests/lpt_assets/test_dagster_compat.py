"""`wipe_partitions` against the installed Dagster's own SQL storage: one shard's events, check
executions and status go, the other shard's stay."""

from dagster import (
    AssetCheckResult,
    AssetKey,
    DynamicPartitionsDefinition,
    asset,
    asset_check,
    instance_for_test,
    materialize,
)
from dagster._core.storage.event_log.base import AssetRecordsFilter

from lpt_assets._dagster_compat import wipe_partitions

parts = DynamicPartitionsDefinition(name="parts")


@asset(partitions_def=parts)
def table() -> None:
    pass


@asset_check(asset=table, partitions_def=parts)
def table_ok() -> AssetCheckResult:
    return AssetCheckResult(passed=False)


def test_one_partitions_history_goes_and_the_others_stays():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("parts", ["a", "b"])
        for key in ("a", "b"):
            assert materialize([table, table_ok], partition_key=key, instance=instance, raise_on_error=False)
        assert instance.get_materialized_partitions(AssetKey("table")) == {"a", "b"}
        before = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("table")), limit=10).records
        assert sorted(r.partition_key for r in before) == ["a", "b"]

        wipe_partitions(instance, [AssetKey("table")], ["a"])

        assert instance.get_materialized_partitions(AssetKey("table")) == {"b"}
        after = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("table")), limit=10).records
        assert [r.partition_key for r in after] == ["b"]
        check_key = table_ok.check_key
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
        assert sorted(record.partition for record in history) == ["b"]
