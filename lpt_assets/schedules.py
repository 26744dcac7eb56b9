"""The backfill schedule: runs for registered shards whose per-shard assets are missing or stale.

Staleness is Dagster's own (code versions chain down the pipeline, see versions.py), judged
against the code location's current asset graph. Shards that a queued or running run already
covers are left alone, so a slow run is never doubled; the rest go out as contiguous ranges,
one engine load per range, each run selecting only the assets that need it.
"""

from collections.abc import Sequence

from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from lpt.config import AutomationConfig
from lpt_assets.partitions import contiguous, shards, shards_in_flight
from lpt_assets.sensors import shard_run_request

SCHEDULE_NAME = "backfill_schedule"


def stale_resolver(instance: DagsterInstance, asset_graph: BaseAssetGraph) -> CachingStaleStatusResolver:
    """Dagster's stale-status resolver (the one behind the UI's "stale" badges), as of now."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def work_needed(
    resolver: CachingStaleStatusResolver, assets: Sequence[AssetKey], keys: Sequence[str]
) -> dict[str, list[AssetKey]]:
    """shard -> its assets that are missing or stale (shards with none are left out)."""
    needed: dict[str, list[AssetKey]] = {}
    for key in keys:
        todo = [a for a in assets if resolver.get_status(a, key) in (StaleStatus.MISSING, StaleStatus.STALE)]
        if todo:
            needed[key] = todo
    return needed


def build_backfill_schedule(settings: AutomationConfig, job_name: str) -> ScheduleDefinition:
    @schedule(
        name=SCHEDULE_NAME,
        job_name=job_name,
        cron_schedule=settings.backfill_cron,
        default_status=DefaultScheduleStatus.RUNNING if settings.schedule_enabled else DefaultScheduleStatus.STOPPED,
        description="Runs every registered shard whose per-shard assets are missing or stale.",
    )
    def backfill_schedule(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        instance = context.instance
        graph = context.repository_def.asset_graph
        in_job = context.repository_def.get_job(job_name).asset_layer.executable_asset_keys
        assets = [key for key in graph.toposorted_asset_keys if key in in_job]
        keys = instance.get_dynamic_partitions(shards.name)
        busy = shards_in_flight(instance, keys)
        needed = work_needed(stale_resolver(instance, graph), assets, [key for key in keys if key not in busy])
        if not needed:
            if busy:
                return SkipReason(f"the other {len(keys) - len(busy)} shards are up to date; {len(busy)} shards in flight")
            return SkipReason(f"all {len(keys)} registered shards are up to date")
        requests = []
        for run_keys in contiguous(keys, set(needed), settings.max_shards_per_run):
            todo: set[AssetKey] = {asset for key in run_keys for asset in needed[key]}
            selection = []
            for asset in assets:  # what a stale asset feeds runs after it, even where it was fresh
                if asset in todo or graph.get(asset).parent_keys & set(selection):
                    selection.append(asset)
            names = ", ".join(a.to_user_string() for a in selection)
            context.log.info(f"backfill {run_keys[0]}...{run_keys[-1]}: {names}")
            requests.append(shard_run_request(run_keys, {"lpt/trigger": "backfill"}, asset_selection=selection))
        return requests

    return backfill_schedule
