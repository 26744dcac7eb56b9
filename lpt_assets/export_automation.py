"""Keeping the exports current: which shards changed since a cursor, and the sensor that runs the
export job when runs that changed shards finish.

A shard changes when any of its checked stages (or its SFT samples and DPO pairs) is
materialized: the run that fails a blocking check has materialized the stage it judged, so a
shard whose checks now fail shows up here too, and the export drops its parts. Only finished runs
count: the materializations of a run still in flight wait (the cursor remembers the run) until it
ends, so an export never binds a shard half redone. Every read follows the new events: new
materializations after the cursor, the status of the runs they name, and the events of the runs
that were waiting and have since finished."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from pydantic import BaseModel, ConfigDict

from lpt.config import AutomationConfig
from lpt.tables import DPO_PAIRS, LONG_COTS, MCQS, RATIONALE_SCORES, SFT_SAMPLES, SIMPLE_COTS, VERIFIED
from lpt_assets.partitions import IN_FLIGHT

EXPORTS_SENSOR = "exports_sensor"
TRIGGER_TAG = "lpt/trigger"
# the per-shard assets whose materialization can change what a shard exports
WATCHED = tuple(t.name for t in (MCQS, SIMPLE_COTS, RATIONALE_SCORES, LONG_COTS, VERIFIED, SFT_SAMPLES, DPO_PAIRS))
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
_PAGE = 1000


class ChangeCursor(BaseModel):
    """Materializations up to `after` are accounted for, except those of the `waiting` runs,
    which were still in flight."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    after: int = 0
    waiting: tuple[str, ...] = ()


class Changes(BaseModel):
    model_config = ConfigDict(frozen=True)
    shards: list[str]
    cursor: ChangeCursor


def _materializations(instance: DagsterInstance, after: int) -> list:
    records = []
    for asset in WATCHED:
        page: str | None = None
        while True:
            result = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), after_storage_id=after),
                limit=_PAGE,
                cursor=page,
                ascending=True,
            )
            records += result.records
            if not result.has_more:
                break
            page = result.cursor
    return records


def _shards_of_finished_run(instance: DagsterInstance, run_id: str) -> set[str]:
    watched = {AssetKey(asset) for asset in WATCHED}
    shards: set[str] = set()
    page: str | None = None
    while True:
        connection = instance.get_records_for_run(
            run_id, cursor=page, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=_PAGE
        )
        for record in connection.records:
            materialization = record.event_log_entry.asset_materialization
            if materialization is not None and materialization.asset_key in watched and materialization.partition:
                shards.add(materialization.partition)
        if not connection.has_more:
            return shards
        page = connection.cursor


def _run_status(instance: DagsterInstance, run_ids: Iterable[str]) -> dict[str, DagsterRunStatus]:
    ids = sorted({run_id for run_id in run_ids if run_id})
    return {run.run_id: run.status for run in instance.get_runs(RunsFilter(run_ids=ids))} if ids else {}


def pending_changes(instance: DagsterInstance, cursor: ChangeCursor) -> Changes:
    """Shards changed by finished runs since `cursor`, and the cursor after them."""
    records = _materializations(instance, cursor.after)
    status = _run_status(instance, [r.run_id for r in records] + list(cursor.waiting))

    def finished(run_id: str) -> bool:  # runless events and deleted runs count as finished
        return not run_id or status.get(run_id, DagsterRunStatus.SUCCESS) in FINISHED

    shards = {r.partition_key for r in records if r.partition_key and finished(r.run_id)}
    for run_id in cursor.waiting:
        if finished(run_id):
            shards |= _shards_of_finished_run(instance, run_id)
    waiting = tuple(
        sorted({run_id for run_id in [*cursor.waiting, *(r.run_id for r in records)] if not finished(run_id)})
    )
    after = max([cursor.after, *(r.storage_id for r in records)])
    return Changes(shards=sorted(shards), cursor=ChangeCursor(after=after, waiting=waiting))


def head_cursor(instance: DagsterInstance) -> ChangeCursor:
    """A cursor at the newest materialization, waiting on the runs in flight: where a rebuild,
    which reads every shard, leaves the feed."""
    latest = [instance.fetch_materializations(AssetKey(asset), limit=1).records for asset in WATCHED]
    after = max([0, *(records[0].storage_id for records in latest if records)])
    in_flight = instance.get_runs(RunsFilter(statuses=IN_FLIGHT))
    return ChangeCursor(after=after, waiting=tuple(sorted(run.run_id for run in in_flight)))


def build_exports_sensor(settings: AutomationConfig, job_name: str) -> SensorDefinition:
    @sensor(
        name=EXPORTS_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if settings.exports_sensor_enabled else DefaultSensorStatus.STOPPED,
        description="Runs the exports when runs that changed shards finish (sensor, schedule or by hand).",
    )
    def exports_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        """One export run at a time: while one is queued or running, changes wait for the next
        tick (the run itself catches up on everything up to its start)."""
        instance = context.instance
        if instance.get_run_records(RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1):
            return SkipReason("an export run is in flight; changes wait for it")
        if context.cursor is None:  # first tick on this instance: one export run reconciles
            start = head_cursor(instance)
            requests = (
                [RunRequest(run_key=f"exports-initial-{start.after}", tags={TRIGGER_TAG: EXPORTS_SENSOR})]
                if start.after
                else []
            )
            return SensorResult(
                run_requests=requests,
                cursor=start.model_dump_json(),
                skip_reason=None if requests else "nothing made yet",
            )
        before = ChangeCursor.model_validate_json(context.cursor)
        changes = pending_changes(instance, before)
        cursor = changes.cursor.model_dump_json()
        if not changes.shards:
            waiting = f"; waiting on {len(changes.cursor.waiting)} run(s) in flight" if changes.cursor.waiting else ""
            return SensorResult(skip_reason=f"no shard changed{waiting}", cursor=cursor)
        context.log.info(f"{len(changes.shards)} shard(s) changed: {', '.join(changes.shards[:10])}")
        run_key = "exports-" + hashlib.sha256(f"{context.cursor}>{cursor}".encode()).hexdigest()[:16]
        return SensorResult(
            run_requests=[RunRequest(run_key=run_key, tags={TRIGGER_TAG: EXPORTS_SENSOR})], cursor=cursor
        )

    return exports_sensor
