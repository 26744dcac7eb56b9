"""Blocking quality checks on a real temporary Dagster instance with the small real CPU model.

One model-backed pipeline run fills the response cache; the blocked run and its follow-up
replay those responses from the cache, so only the first run generates anything.
"""

import pytest
from dagster import AssetKey, build_run_status_sensor_context, instance_for_test
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lpt.config import PipelineConfig
from lpt.tables import DPO_PAIRS
from lpt_assets.checks import UNBLOCK_SENSOR, UNBLOCKED_FROM_TAG, check_keys, failed_checks
from lpt_assets.location import PIPELINE_JOB, build_definitions
from lpt_assets.partitions import contiguous, shards_of_run
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore
from tests.small_config import SMALL as SMALL_CONFIG

SMALL = {**SMALL_CONFIG, "engines": {role: {"batch_size": 64} for role in ("ask", "vlm", "reasoner")}}
# shard 00000 holds two images (four MCQs proposed), shard 00001 one image (two)
SOURCE = "sample?limit=3&shard_size=2"
DOWNSTREAM_OF_MCQS = ["simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]


def test_contiguous_ranges_skip_blocked_shards() -> None:
    keys = ["s0", "s1", "s2", "s3", "s4"]

    def passing_ranges(blocked):  # as the unblocking sensor asks: the shards that were not blocked
        return [(run[0], run[-1]) for run in contiguous(keys, set(keys) - blocked)]

    assert passing_ranges({"s2"}) == [("s0", "s1"), ("s3", "s4")]
    assert passing_ranges({"s0", "s4"}) == [("s1", "s3")]
    assert passing_ranges(set(keys)) == []
    assert list(contiguous(keys, set(keys), limit=2)) == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    run = {ASSET_PARTITION_RANGE_START_TAG: "s1", ASSET_PARTITION_RANGE_END_TAG: "s3"}
    assert shards_of_run(run, keys) == ["s1", "s2", "s3"]
    assert shards_of_run({**run, ASSET_PARTITION_RANGE_END_TAG: "gone"}, keys) == []
    assert shards_of_run({"dagster/partition": "s4"}, keys) == ["s4"]


def _config(root, **checks) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {**SMALL, "checks": checks, "storage": str(root / "data"), "exports": str(root / "exports")}
    )


def _home(root, name: str) -> str:
    (root / name).mkdir()
    return str(root / name)


def _run_range(instance, config, first, last, **tags):
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last, **tags},
    )


def _latest(instance, check_key, shard):
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=1, partition_filter=PartitionKeyFilter(key=shard)
    )
    assert history, f"no evaluation of {check_key.to_user_string()} for {shard}"
    return history[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("checks")


@pytest.fixture(scope="module")
def passing(root):
    """Default thresholds over two shards in one range run (the model runs here only)."""
    config = _config(root)
    with instance_for_test(temp_dir=_home(root, "home-pass")) as instance:
        keys = register_source(SOURCE, ParquetStore(base=config.storage), instance).shards
        result = _run_range(instance, config, keys[0], keys[-1])
        yield instance, keys, result


@pytest.fixture(scope="module")
def blocked(root, passing):
    """MCQ validity must reach 1.01 wherever there are at least 3 proposals: shard 00000
    (four) fails, shard 00001 (two) passes with a note. A fresh instance, the same cache."""
    config = _config(root, min_rows=3, min_mcq_validity=1.01)
    with instance_for_test(temp_dir=_home(root, "home-block")) as instance:
        keys = register_source(SOURCE, ParquetStore(base=config.storage), instance).shards
        result = _run_range(instance, config, keys[0], keys[-1])
        yield config, instance, keys, result


@pytest.mark.slow
def test_default_thresholds_pass_and_every_shard_has_its_evaluations(passing) -> None:
    instance, keys, result = passing
    assert result.success
    assert len(keys) == 2
    for check_key in check_keys():
        for shard in keys:
            record = _latest(instance, check_key, shard)
            assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, (check_key, shard)
            evaluation = record.event.dagster_event.event_specific_data
            assert evaluation.partition == shard and evaluation.blocking
            assert evaluation.description == evaluation.metadata["reason"].value
            assert {"value", "threshold", "rows", "judged"} <= set(evaluation.metadata)
    assert failed_checks(instance, keys) == {}


@pytest.mark.slow
def test_failing_check_stops_downstream_for_its_shard(blocked) -> None:
    _, instance, (big, small), result = blocked
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "mcqs_quality"
    assert "blocking asset check failed" in failure.step_failure_data.error.message
    assert instance.get_materialized_partitions(AssetKey("mcqs")) == {big, small}
    for asset in DOWNSTREAM_OF_MCQS:
        assert instance.get_materialized_partitions(AssetKey(asset)) == set(), asset

    [validity] = [k for k in check_keys() if k.name == "mcq_validity"]
    failed = _latest(instance, validity, big)
    assert failed.status == AssetCheckExecutionRecordStatus.FAILED
    evaluation = failed.event.dagster_event.event_specific_data
    assert evaluation.description.endswith("is outside the threshold >= 1.01")
    assert evaluation.metadata["rows"].value == 4 and evaluation.metadata["judged"].value is True
    passed = _latest(instance, validity, small).event.dagster_event.event_specific_data
    assert passed.passed and "too few rows to judge" in passed.description
    assert failed_checks(instance, [big, small], run_id=result.run_id) == {big: ["mcqs:mcq_validity"]}


@pytest.mark.slow
def test_sensor_lets_the_other_shard_go_on(blocked) -> None:
    config, instance, (big, small), result = blocked
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(UNBLOCK_SENSOR)
    context = build_run_status_sensor_context(
        sensor_name=UNBLOCK_SENSOR,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()
    [request] = list(sensor(context))
    assert request.job_name == PIPELINE_JOB
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == request.tags[ASSET_PARTITION_RANGE_END_TAG] == small
    assert request.tags[UNBLOCKED_FROM_TAG] == result.run_id

    follow_up = defs.resolve_job_def(request.job_name).execute_in_process(instance=instance, tags=request.tags)
    assert follow_up.success
    for asset in DOWNSTREAM_OF_MCQS:
        assert instance.get_materialized_partitions(AssetKey(asset)) == {small}, asset
    # the follow-up replays the cache: no request reaches an engine
    for stage in ("mcqs", "simple_cots", "long_cots"):
        event = instance.get_latest_materialization_event(AssetKey(stage))
        assert event.asset_materialization.metadata["requests_sent"].value == 0, stage


@pytest.mark.slow
def test_exports_hold_back_a_shard_that_failed_its_checks(blocked) -> None:
    """The passing run left sft/dpo files for both shards in the shared storage; the export in
    the blocked instance must still leave out the shard whose gate failed."""
    config, instance, (big, small), _ = blocked
    store = ParquetStore(base=config.storage)
    assert store.exists(DPO_PAIRS, big), "the passing run should have left files for the big shard"
    exports = build_definitions(config).resolve_job_def("lpt_exports").execute_in_process(instance=instance)
    assert exports.success
    event = instance.get_latest_materialization_event(AssetKey("llamafactory_export"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["held_back_by_checks"] == {big: ["mcqs:mcq_validity"]}
    assert metadata["shards"] == 1
    assert metadata["dpo_rows"] == len(store.read(DPO_PAIRS, small))
