"""lpt_assets/_dagster_compat.py against the installed Dagster: the pinned version, then each
non-public name or call it wraps, on a real temporary instance where it touches one."""

import dagster
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetKey,
    AssetRecordsFilter,
    Definitions,
    DynamicPartitionsDefinition,
    asset,
    asset_check,
    define_asset_job,
    instance_for_test,
    materialize,
)

from lpt_assets import _dagster_compat as compat
from lpt_assets._dagster_compat import wipe_partitions

parts = DynamicPartitionsDefinition(name="parts")


@asset(partitions_def=parts, code_version="v1")
def table() -> None:
    pass


@asset_check(asset=table, partitions_def=parts)
def table_ok() -> AssetCheckResult:
    return AssetCheckResult(passed=False)


def test_the_pinned_dagster_is_installed():
    assert dagster.__version__ == "1.13.27", (
        "Dagster changed: re-verify every item in lpt_assets/_dagster_compat.py against the new "
        "version (this file exercises each), then move this pin"
    )


def test_the_tag_names_are_dagsters_own():
    from dagster._core.definitions import data_version
    from dagster._core.storage import tags

    for name in (
        "PARTITION_NAME_TAG",
        "ASSET_PARTITION_RANGE_START_TAG",
        "ASSET_PARTITION_RANGE_END_TAG",
        "RUN_KEY_TAG",
        "SCHEDULE_NAME_TAG",
    ):
        assert getattr(compat, name) == getattr(tags, name), name
    assert (compat.DATA_VERSION_TAG, compat.CODE_VERSION_TAG) == (
        data_version.DATA_VERSION_TAG,
        data_version.CODE_VERSION_TAG,
    )


def test_the_types_are_what_the_public_api_hands_out():
    job = define_asset_job("tables", selection=[table])
    assert isinstance(job, compat.UnresolvedAssetJobDefinition)
    defs = Definitions(assets=[table], jobs=[job])
    assert isinstance(defs.resolve_asset_graph(), compat.BaseAssetGraph)
    graph = defs.get_repository_def().asset_graph
    assert isinstance(graph, compat.BaseAssetGraph) and graph.get(table.key).code_version == "v1"


def test_one_partitions_history_goes_and_the_others_stays():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("parts", ["a", "b"])
        for key in ("a", "b"):
            assert materialize([table, table_ok], partition_key=key, instance=instance, raise_on_error=False)
        assert instance.get_materialized_partitions(AssetKey("table")) == {"a", "b"}
        before = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("table")), limit=10).records
        assert sorted(r.partition_key for r in before) == ["a", "b"]
        tags = before[0].asset_materialization.tags or {}
        assert tags[compat.CODE_VERSION_TAG] == "v1" and compat.DATA_VERSION_TAG in tags

        wipe_partitions(instance, [AssetKey("table")], ["a"])

        assert instance.get_materialized_partitions(AssetKey("table")) == {"b"}
        after = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("table")), limit=10).records
        assert [r.partition_key for r in after] == ["b"]
        check_key = table_ok.check_key
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
        assert sorted(record.partition for record in history) == ["b"]


def test_a_partitioned_check_evaluation_links_its_materialization_and_reads_back_failed():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("parts", ["a"])
        assert materialize([table], partition_key="a", instance=instance).success
        record = instance.fetch_materializations(AssetRecordsFilter(asset_key=table.key), limit=1).records[0]
        target = compat.AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.event_log_entry.run_id, timestamp=record.timestamp
        )
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=table.key,
                check_name="table_ok",
                passed=False,
                partition="a",
                target_materialization_data=target,
            )
        )
        [info] = instance.event_log_storage.get_asset_check_partition_info(
            [AssetCheckKey(table.key, "table_ok")], partition_keys=["a"]
        )
        assert info.partition_key == "a"
        assert info.latest_execution_status == compat.AssetCheckExecutionRecordStatus.FAILED
        assert info.latest_target_materialization_storage_id == record.storage_id
