"""The backfill schedule as the daemon runs it: `evaluate_tick` on a real instance, each request
launched once per run key (the daemon's rule) and executed, then the next tick.

The assets here have the pipeline's shape (per-shard, chained code versions, single-run
backfills, a blocking per-shard check) without models, so 30 shards run in seconds; the
schedule, its bulk reads and the checks' reads are the real ones. The full pipeline's schedule
test with the small model is tests/lpt_assets/test_sensors.py."""

from collections import Counter

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    DagsterRunStatus,
    Definitions,
    MaterializeResult,
    Output,
    RunsFilter,
    asset,
    build_schedule_context,
    define_asset_job,
    instance_for_test,
    multi_asset_check,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    RUN_KEY_TAG,
    SCHEDULE_NAME_TAG,
)

from lpt.config import AutomationConfig
from lpt_assets.partitions import shards, shards_of_run
from lpt_assets.schedules import RETRY_SUFFIX, SCHEDULE_NAME, build_backfill_schedule

JOB = "pipeline"
KEYS = [f"s{i:02d}" for i in range(30)]
# 20 stale shards in three ranges; the others are made current first
STALE = [*KEYS[3:9], *KEYS[12:19], *KEYS[22:29]]
ASSETS = ["captions", "mcqs", "simple_cots"]


def toy_definitions(
    mcqs_version: str = "m1", bad: frozenset[str] = frozenset(), empty: frozenset[str] = frozenset()
) -> Definitions:
    common = dict(partitions_def=shards, backfill_policy=BackfillPolicy.single_run())

    @asset(code_version="c1", **common)
    def captions(context: AssetExecutionContext) -> MaterializeResult:
        return MaterializeResult(metadata={"rows_out": sum(key not in empty for key in context.partition_keys)})

    @asset(code_version=mcqs_version, deps=[captions], **common)
    def mcqs(context: AssetExecutionContext) -> MaterializeResult:
        return MaterializeResult(metadata={"rows_out": len(context.partition_keys)})

    @asset(code_version=f"s1-{mcqs_version}", deps=[mcqs], **common)  # versions chain, as in versions.py
    def simple_cots(context: AssetExecutionContext) -> MaterializeResult:
        return MaterializeResult(metadata={"rows_out": len(context.partition_keys)})

    spec = AssetCheckSpec("mcq_validity", asset="mcqs", blocking=True, partitions_def=shards)

    @multi_asset_check(specs=[spec])
    def mcqs_quality(context):
        for key in context.partition_keys:
            yield AssetCheckEvaluation(
                asset_key=AssetKey("mcqs"),
                check_name="mcq_validity",
                passed=key not in bad,
                severity=AssetCheckSeverity.ERROR,
                blocking=True,
                partition=key,
            )
        yield Output(None, output_name=spec.get_python_identifier())

    settings = AutomationConfig(max_shards_per_run=4)
    return Definitions(
        assets=[captions, mcqs, simple_cots],
        asset_checks=[mcqs_quality],
        jobs=[define_asset_job(JOB, selection=ASSETS)],
        schedules=[build_backfill_schedule(settings, JOB)],
    )


def tick(defs: Definitions, instance):
    with build_schedule_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=defs.get_repository_def()
    ) as context:
        return defs.resolve_schedule_def(SCHEDULE_NAME).evaluate_tick(context)


def launch(defs: Definitions, instance, requests) -> list[bool]:
    """What the daemon does with a tick's requests: a run key already used is skipped; the
    others run (in process here) with the schedule's tags."""
    outcomes = []
    for request in requests:
        if instance.get_runs(filters=_same_key(request.run_key)):
            continue
        tags = {**request.tags, RUN_KEY_TAG: request.run_key, SCHEDULE_NAME_TAG: SCHEDULE_NAME}
        result = defs.resolve_job_def(JOB).execute_in_process(
            instance=instance,
            tags=tags,
            partition_key=request.partition_key,
            asset_selection=request.asset_selection,
            raise_on_error=False,
        )
        outcomes.append(result.success)
    return outcomes


def _same_key(run_key: str) -> RunsFilter:
    return RunsFilter(tags={RUN_KEY_TAG: run_key, SCHEDULE_NAME_TAG: SCHEDULE_NAME})


def materialized(instance, name: str) -> Counter:
    records = instance.fetch_materializations(AssetKey(name), limit=10_000).records
    return Counter(record.partition_key for record in records)


def covered(request) -> list[str]:
    return shards_of_run(request.tags, KEYS) if PARTITION_NAME_TAG not in request.tags else [request.partition_key]


@pytest.fixture
def instance(tmp_path):
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(shards.name, KEYS)
        yield instance


@pytest.fixture
def current_but_stale(instance):
    """The 10 shards outside STALE made current by ordinary runs: 20 stale in three ranges."""
    defs = toy_definitions()
    job = defs.resolve_job_def(JOB)
    for first, last in [("s00", "s02"), ("s09", "s11"), ("s19", "s21"), ("s29", "s29")]:
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        assert job.execute_in_process(instance=instance, tags=tags).success
    return defs


def test_twenty_stale_shards_in_three_ranges_are_each_materialized_once(instance, current_but_stale):
    defs = current_but_stale
    first = tick(defs, instance)
    # one run per contiguous range, cut at max_shards_per_run = 4, every stale shard once
    assert [(covered(r)[0], covered(r)[-1]) for r in first.run_requests] == [
        ("s03", "s06"),
        ("s07", "s08"),
        ("s12", "s15"),
        ("s16", "s18"),
        ("s22", "s25"),
        ("s26", "s28"),
    ]
    assert sorted(k for r in first.run_requests for k in covered(r)) == STALE
    keys = [r.run_key for r in first.run_requests]
    assert len(set(keys)) == len(keys)
    # the same state gives the same keys: the daemon launches each once
    assert [r.run_key for r in tick(defs, instance).run_requests] == keys

    assert launch(defs, instance, first.run_requests) == [True] * 6
    assert launch(defs, instance, tick(defs, instance).run_requests) == []  # nothing left to run
    for name in ASSETS:
        assert materialized(instance, name) == Counter({key: 1 for key in KEYS}), name
    after = tick(defs, instance)
    assert not after.run_requests and after.skip_message.startswith("30 of 30 registered shards are up to date")


def test_a_code_change_reruns_its_asset_and_later_but_not_empty_or_held_back_shards(instance, current_but_stale):
    launch(current_but_stale, instance, tick(current_but_stale, instance).run_requests)
    changed = toy_definitions(mcqs_version="m2", bad=frozenset({"s05"}), empty=frozenset())
    (*requests,) = tick(changed, instance).run_requests
    assert sorted(k for r in requests for k in covered(r)) == KEYS
    assert all(set(r.asset_selection) == {AssetKey("mcqs"), AssetKey("simple_cots")} for r in requests)
    # s05's check fails: its run (s04...s07) fails and stops simple_cots for all four shards
    outcomes = launch(changed, instance, requests)
    assert outcomes.count(False) == 1
    again = tick(changed, instance)
    # s05 is held back (its mcqs are current; a rerun would fail the same way), the rest of its range runs
    assert [covered(r) for r in again.run_requests] == [["s04"], ["s06", "s07"]]
    assert launch(changed, instance, again.run_requests) == [True, True]
    final = tick(changed, instance)
    assert not final.run_requests and "held back by failed checks: s05" in final.skip_message


def test_empty_shards_are_skipped_and_a_failed_run_is_retried_once(instance):
    defs = toy_definitions(empty=frozenset({"s01"}))
    job = defs.resolve_job_def(JOB)
    assert job.execute_in_process(instance=instance, partition_key="s01").success
    assert job.execute_in_process(
        instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: "s02", ASSET_PARTITION_RANGE_END_TAG: "s29"}
    ).success
    changed = toy_definitions(mcqs_version="m2", empty=frozenset({"s01"}))
    result = tick(changed, instance)
    assert "s01" not in {k for r in result.run_requests for k in covered(r)}  # empty: nothing to generate
    assert "s00" in covered(result.run_requests[0])  # never run: captions missing
    # the first run fails without materializing anything: the next tick retries it once
    request = result.run_requests[0]
    instance.create_run_for_job(
        changed.resolve_job_def(JOB),
        status=DagsterRunStatus.FAILURE,
        tags={**request.tags, RUN_KEY_TAG: request.run_key, SCHEDULE_NAME_TAG: SCHEDULE_NAME},
    )
    retried = tick(changed, instance).run_requests
    assert retried[0].run_key == request.run_key + RETRY_SUFFIX
    assert [r.run_key for r in retried[1:]] == [r.run_key for r in result.run_requests[1:]]
