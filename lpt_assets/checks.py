"""Blocking quality checks: one multi-check per stage, judged and recorded per shard.

How a failing check stops downstream for its shard (Dagster 1.13):

- Every check is `blocking=True` and partitioned by `shards`, so the UI lists its result per
  shard. The check step judges each shard of its run (`context.partition_keys`: a single-run
  backfill holds many) and records one `AssetCheckEvaluation` per shard with `partition=KEY`,
  the value, threshold, row count and reason (as metadata and description). It emits
  evaluations rather than `AssetCheckResult`s because a result carries no partition: in a
  range run Dagster would record it once, for no shard.
- Dagster fails a step that records a failed blocking ERROR evaluation, and every asset
  downstream of the checked one depends on the check's output within the run, so those steps
  are skipped: downstream is not materialized for that shard. The upstream asset and its
  other checks keep what they recorded.
- One run writes one step for all its shards, all or none. A run of one shard (the UI's
  per-partition launch, `dagster job execute --tags '{"dagster/partition": KEY}'`) therefore
  stops exactly that shard while other runs go on. In a range run (single-run backfills) a
  failing shard also holds back the run's other shards, so the `unblock_passing_shards`
  run-failure sensor requests the same job again for the shards whose checks did not fail,
  one run per contiguous range; their finished stages come back from the response cache.
"""

from collections.abc import Iterator, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    MetadataValue,
    Output,
    RunFailureSensorContext,
    RunRequest,
    SensorDefinition,
    SkipReason,
    multi_asset_check,
    run_failure_sensor,
)

from lpt.config import PipelineConfig
from lpt.quality import (
    QualityResult,
    accuracy_band,
    leak_rate,
    mcq_validity,
    pair_balance,
    parse_rate,
    truncation_rate,
)
from lpt.tables import DPO_PAIRS, LONG_COTS, MCQS, MCQS_QUARANTINE, SIMPLE_COTS, VERIFIED
from lpt.verify import verify_short
from lpt_assets._dagster_compat import (
    AssetCheckEvaluationTargetMaterializationData,
    UnresolvedAssetJobDefinition,
)
from lpt_assets.bulk_reads import latest_check_failures
from lpt_assets.partitions import contiguous, range_tags, shards, shards_of_run
from lpt_resources.storage import ParquetStore

UNBLOCK_SENSOR = "unblock_passing_shards"
UNBLOCKED_FROM_TAG = "lpt/unblocked_from"  # on a follow-up run: the run a failed check stopped
# asset -> its checks, with what each one guards against (the UI shows these descriptions)
CHECKS: dict[str, dict[str, str]] = {
    MCQS.name: {"mcq_validity": "Valid MCQs among all the ask model proposed (refused ones included)."},
    SIMPLE_COTS.name: {
        "parse_rate": "Short CoTs whose answer could be parsed and graded, among those that finished.",
        "truncation_rate": "Short CoTs cut at the token limit.",
    },
    LONG_COTS.name: {"truncation_rate": "Continuations still cut at the token limit after the retry."},
    VERIFIED.name: {
        "leak_rate": "Graded traces dropped because they leak the setup (description, text, ...).",
        "short_accuracy": "Short-CoT accuracy within its band: too low is broken, too high is too easy.",
        "long_accuracy": "Long-CoT accuracy within its band: too low is broken, too high is too easy.",
    },
    DPO_PAIRS.name: {"pair_balance": "No DPO pair type dominates, and a shard with enough MCQs yields pairs."},
}


def check_keys() -> list[AssetCheckKey]:
    return [AssetCheckKey(AssetKey(asset), name) for asset, names in CHECKS.items() for name in names]


def _judge(asset: str, store: ParquetStore, key: str, config: PipelineConfig) -> list[QualityResult]:
    """Every check of one asset on one shard, in the order of CHECKS[asset]."""
    limits = config.checks
    if asset == MCQS.name:
        return [mcq_validity(store.read(MCQS, key), store.read(MCQS_QUARANTINE, key), limits)]
    if asset == SIMPLE_COTS.name:
        shorts = store.read(SIMPLE_COTS, key)
        items = {i.mcq.mcq_id: i for i in store.read(MCQS, key)}
        graded = [verify_short(c, items[c.mcq_id], config.verify) for c in shorts if c.mcq_id in items]
        return [parse_rate(graded, limits), truncation_rate(shorts, limits.max_truncation_rate_short, limits)]
    if asset == LONG_COTS.name:
        return [truncation_rate(store.read(LONG_COTS, key), limits.max_truncation_rate_long, limits)]
    if asset == VERIFIED.name:
        rows = store.read(VERIFIED, key)
        return [
            leak_rate(rows, limits),
            accuracy_band(rows, "short", limits.short_accuracy, limits),
            accuracy_band(rows, "long", limits.long_accuracy, limits),
        ]
    if asset == DPO_PAIRS.name:
        return [pair_balance(store.read(DPO_PAIRS, key), len(store.read(MCQS, key)), limits)]
    raise ValueError(f"no checks for asset {asset!r}")


def _target(
    instance: DagsterInstance, asset: AssetKey, key: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The shard's materialization the evaluation judged, so the UI links the two."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.event_log_entry.run_id, timestamp=record.timestamp
    )


def _evaluation(
    asset: str, key: str, result: QualityResult, target: AssetCheckEvaluationTargetMaterializationData | None
) -> AssetCheckEvaluation:
    """One verdict as the per-shard evaluation the UI shows: the reason is its description."""
    return AssetCheckEvaluation(
        asset_key=AssetKey(asset),
        check_name=result.check,
        passed=result.passed,
        metadata={
            "value": MetadataValue.float(result.value) if result.value is not None else MetadataValue.null(),
            "threshold": result.threshold,
            "rows": result.rows,
            "judged": result.judged,
            "reason": MetadataValue.text(result.reason),
        },
        target_materialization_data=target,
        severity=AssetCheckSeverity.ERROR,
        description=result.reason,
        blocking=True,
        partition=key,
    )


def _build(asset: str, config: PipelineConfig) -> AssetChecksDefinition:
    specs = [
        AssetCheckSpec(name, asset=asset, description=text, blocking=True, partitions_def=shards)
        for name, text in CHECKS[asset].items()
    ]

    @multi_asset_check(
        name=f"{asset}_quality", specs=specs, description=f"Blocking quality checks on {asset}, per shard."
    )
    def quality(context: AssetCheckExecutionContext, store: ParquetStore) -> Iterator:
        for key in context.partition_keys:
            target = _target(context.instance, AssetKey(asset), key)
            for result in _judge(asset, store, key, config):
                if not result.passed:
                    context.log.error(f"{asset} {key}: check {result.check} failed: {result.reason}")
                yield _evaluation(asset, key, result, target)
        for spec in specs:  # the outputs downstream steps wait on within the run
            yield Output(None, output_name=spec.get_python_identifier())

    return quality


def build_checks(config: PipelineConfig) -> list[AssetChecksDefinition]:
    """The blocking checks of every stage, or none when `checks.enabled` is false."""
    return [_build(asset, config) for asset in CHECKS] if config.checks.enabled else []


def failed_checks(instance: DagsterInstance, keys: Sequence[str], run_id: str | None = None) -> dict[str, list[str]]:
    """shard -> the checks ("asset:check") whose latest evaluation of it failed; with `run_id`,
    only evaluations recorded by that run. One bulk read per check, whatever the shards."""
    failed: dict[str, list[str]] = {}
    order = {check_key: index for index, check_key in enumerate(check_keys())}
    for key, checks in latest_check_failures(instance, list(order), keys).items():
        names = [
            f"{c.asset_key.to_user_string()}:{c.name}"
            for c, run in sorted(checks, key=lambda cr: order[cr[0]])
            if run_id in (None, run)
        ]
        if names:
            failed[key] = names
    return failed


def build_check_sensors(config: PipelineConfig, jobs: Sequence[UnresolvedAssetJobDefinition]) -> list[SensorDefinition]:
    """When a blocking check stops a multi-shard run, request the same job again for the
    shards whose checks did not fail, one run per contiguous range; the blocked shards stay
    unmaterialized downstream until their data or thresholds change. Stages those shards have
    finished come back from the response cache without a model load. None when checks are off."""
    if not config.checks.enabled:
        return []

    @run_failure_sensor(
        name=UNBLOCK_SENSOR,
        monitored_jobs=list(jobs),
        request_jobs=list(jobs),
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-runs the shards a failed blocking check held back in a multi-shard run.",
    )
    def unblock_passing_shards(context: RunFailureSensorContext):
        run = context.dagster_run
        keys = shards_of_run(run.tags, shards.get_partition_keys(dynamic_partitions_store=context.instance))
        blocked = failed_checks(context.instance, keys, run_id=run.run_id)
        if not blocked:
            return SkipReason(f"run {run.run_id} failed, but no blocking check failed in it")
        for passing in contiguous(keys, set(keys) - set(blocked)):
            first, last = passing[0], passing[-1]
            yield RunRequest(
                run_key=f"{run.run_id}:{first}...{last}",
                job_name=run.job_name,
                tags={**range_tags(first, last), UNBLOCKED_FROM_TAG: run.run_id},
            )

    return [unblock_passing_shards]
