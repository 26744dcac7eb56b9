"""The backfill schedule: runs for registered shards whose per-shard assets are missing or stale.

What needs work comes from a few bulk reads (bulk_reads.py), not one status query per asset per
shard, so a tick costs about the same with 100 or 100k up-to-date shards: the latest
materialization of each asset over all shards, the code version behind each of their data
versions, the runs in flight, and the check results. An asset of a shard needs work when it is
missing, was made by another code version than the current one (versions chain down the
pipeline, see versions.py), is older than a parent's latest materialization, or a parent needs
work. Then:

- shards that a queued or running run covers are left alone, so a slow run is never doubled;
- shards whose latest captions are empty (`rows_out` 0) have nothing to generate: skipped;
- shards where a blocking check failed on an asset that is current are held back (a new run
  would fail the same way) until their code or data change or someone runs them by hand;
- the rest go out as contiguous ranges of at most `max_shards_per_run` shards, one engine
  load per range, each run selecting only the assets that need it and what they feed.

Each request's run key names its range and hashes what makes it stale (the assets' current
code versions and their latest materializations on those shards). Two ticks over the same
state give the same keys, and the daemon launches a key once; a run that failed without
changing anything is retried once, under the key with ":retry".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from lpt.config import AutomationConfig
from lpt.records import stable_id
from lpt.tables import CAPTIONS
from lpt_assets._dagster_compat import RUN_KEY_TAG, SCHEDULE_NAME_TAG, BaseAssetGraph
from lpt_assets.bulk_reads import (
    Latest,
    code_versions_of,
    latest_check_failures,
    latest_materializations,
    materialization_metadata,
)
from lpt_assets.partitions import SHARDS, contiguous, shards_in_flight
from lpt_assets.sensors import shard_run_request

SCHEDULE_NAME = "backfill_schedule"
ROOT_ASSET = AssetKey(CAPTIONS.name)  # a shard whose latest captions hold no row has nothing to generate
RETRY_SUFFIX = ":retry"


class Staleness:
    """What every shard needs, from one bulk read per asset: `needed` maps shard -> its assets
    (in pipeline order) that are missing or stale; shards needing nothing are left out."""

    def __init__(
        self, instance: DagsterInstance, graph: BaseAssetGraph, assets: Sequence[AssetKey], keys: Sequence[str]
    ):
        self.latest: dict[AssetKey, dict[str, Latest]] = {
            asset: latest_materializations(instance, asset) for asset in assets
        }
        current = {asset: graph.get(asset).code_version for asset in assets}
        made_by = {asset: code_versions_of(instance, asset, self.latest[asset].values()) for asset in assets}
        parents = {asset: [p for p in graph.get(asset).parent_keys if p in self.latest] for asset in assets}
        self.needed: dict[str, list[AssetKey]] = {}
        for key in keys:
            todo: list[AssetKey] = []
            for asset in assets:
                record = self.latest[asset].get(key)
                stale = (
                    record is None
                    or made_by[asset].get(record.data_version or "") != current[asset]
                    or any(
                        parent in todo or self.latest[parent][key].storage_id > record.storage_id
                        for parent in parents[asset]
                    )
                )
                if stale:
                    todo.append(asset)
            if todo:
                self.needed[key] = todo

    def fingerprint(
        self, keys: Sequence[str], selection: Sequence[AssetKey], versions: Mapping[AssetKey, str | None]
    ) -> str:
        """What makes these shards stale for these assets: equal for equal states."""
        names = {asset: asset.to_user_string() for asset in selection}  # once per run, not per shard
        latest = [
            (names[asset], key, getattr(self.latest[asset].get(key), "storage_id", None))
            for asset in selection
            for key in keys
        ]
        return stable_id(sorted((names[a], versions[a]) for a in selection), latest)[:16]


def empty_shards(instance: DagsterInstance, staleness: Staleness, keys: Sequence[str]) -> set[str]:
    """Of `keys`, those whose current captions hold no row (their materialization's rows_out)."""
    captions = staleness.latest.get(ROOT_ASSET, {})
    ids = {captions[key].storage_id: key for key in keys if key in captions}
    metadata = materialization_metadata(instance, ROOT_ASSET, ids)
    return {
        ids[storage_id]
        for storage_id, values in metadata.items()
        if getattr(values.get("rows_out"), "value", None) == 0
    }


def failed_runs_by_key(instance: DagsterInstance, run_keys: Sequence[str]) -> set[str]:
    """Run keys of this schedule whose run failed or was canceled (one query)."""
    if not run_keys:
        return set()
    runs = instance.get_runs(
        RunsFilter(
            tags={RUN_KEY_TAG: list(run_keys), SCHEDULE_NAME_TAG: SCHEDULE_NAME},
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
        )
    )
    return {run.tags[RUN_KEY_TAG] for run in runs}


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
        layer = context.repository_def.get_job(job_name).asset_layer
        in_job = set(layer.executable_asset_keys)
        assets = [key for key in graph.toposorted_asset_keys if key in in_job]
        keys = instance.get_dynamic_partitions(SHARDS)
        busy = shards_in_flight(instance, keys)
        staleness = Staleness(instance, graph, assets, [key for key in keys if key not in busy])
        needed = staleness.needed
        fresh_root = [key for key, todo in needed.items() if ROOT_ASSET not in todo]
        empty = empty_shards(instance, staleness, fresh_root) if ROOT_ASSET in in_job else set()
        checks = [check for check in graph.asset_check_keys if check.asset_key in in_job]
        failures = (
            latest_check_failures(instance, checks, [key for key in needed if key not in empty]) if checks else {}
        )
        held = {
            key for key, failed in failures.items() if not {check.asset_key for check, _ in failed} & set(needed[key])
        }
        todo_keys = {key for key in needed if key not in empty and key not in held}
        notes = []
        if busy:
            notes.append(f"{len(busy)} shards in flight")
        if empty:
            notes.append(f"{len(empty)} empty shards skipped")
        if held:
            notes.append(f"{len(held)} shards held back by failed checks: {', '.join(sorted(held)[:10])}")
            for key in sorted(held)[:50]:
                names = ", ".join(f"{c.asset_key.to_user_string()}:{c.name}" for c, _ in failures[key])
                context.log.info(f"held back {key}: {names} failed; run it by hand once its data or thresholds change")
        if not todo_keys:
            up_to_date = len(keys) - len(busy) - len(needed)
            return SkipReason("; ".join([f"{up_to_date} of {len(keys)} registered shards are up to date", *notes]))
        versions = {asset: graph.get(asset).code_version for asset in assets}
        planned = []
        for run_keys in contiguous(keys, todo_keys, settings.max_shards_per_run):
            todo: set[AssetKey] = {asset for key in run_keys for asset in needed[key]}
            selection: list[AssetKey] = []
            for asset in assets:  # what a stale asset feeds runs after it, even where it was fresh
                if asset in todo or graph.get(asset).parent_keys & set(selection):
                    selection.append(asset)
            run_key = f"{run_keys[0]}...{run_keys[-1]}:{staleness.fingerprint(run_keys, selection, versions)}"
            planned.append((run_key, run_keys, selection))
        failed = failed_runs_by_key(instance, [run_key for run_key, _, _ in planned])
        if notes:
            context.log.info("; ".join(notes))
        requests = []
        for run_key, run_keys, selection in planned:
            if run_key in failed:
                run_key += RETRY_SUFFIX
            names = ", ".join(a.to_user_string() for a in selection)
            context.log.info(f"backfill {run_keys[0]}...{run_keys[-1]} ({len(run_keys)} shards): {names}")
            requests.append(
                shard_run_request(run_keys, {"lpt/trigger": "backfill"}, run_key=run_key, asset_selection=selection)
            )
        return requests

    return backfill_schedule
