"""The caption sensor: new caption files in a watched folder become registered shards and runs.

A manifest (`*.jsonl`, `*.jsonlines`, `*.parquet`: rows with an image and a description) is
registered as `manifest:PATH?name=STEM`; a folder holding DOCCI's `docci_descriptions.jsonlines`
is registered as `docci:FOLDER?name=FOLDER` per configured split. The cursor remembers each file
by size and modification time, so a file is handled once, and again only if it changes.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from pydantic import BaseModel

from lpt.config import AutomationConfig
from lpt_assets.partitions import chunks, range_tags
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore

SENSOR_NAME = "caption_drop_sensor"
DOCCI_FILE = "docci_descriptions.jsonlines"
SOURCE_TAG = "lpt/source"


class Drop(BaseModel):
    """One caption file found in a watched folder and the source specs it stands for."""

    path: str
    signature: str  # size and modification time: a changed file is a new drop
    modified: float
    specs: list[str]


def _spec(kind: str, location: Path, **options: object) -> str:
    return f"{kind}:{location}?{urlencode(options)}"


def find_drops(settings: AutomationConfig) -> Iterator[Drop]:
    """Manifests directly in each watched folder, and DOCCI folders one level down (or the
    watched folder itself), in sorted order so shards register in a stable order."""
    for folder in map(Path, settings.watch):
        if not folder.is_dir():
            continue
        candidates = [p for pattern in settings.patterns for p in folder.glob(pattern)]
        candidates += folder.glob(f"*/{DOCCI_FILE}")
        for path in sorted(set(candidates)):
            if not path.is_file():
                continue
            stat = path.stat()
            if path.name == DOCCI_FILE:
                name = path.parent.name
                specs = [
                    _spec("docci", path.parent, split=split, name=name, shard_size=settings.shard_size)
                    for split in settings.docci_splits
                ]
            else:
                specs = [_spec("manifest", path, name=path.stem, shard_size=settings.shard_size)]
            yield Drop(
                path=str(path), signature=f"{stat.st_size}:{stat.st_mtime_ns}", modified=stat.st_mtime, specs=specs
            )


def shard_run_request(
    keys: list[str], tags: dict[str, str], run_key: str | None = None, asset_selection: list[AssetKey] | None = None
) -> RunRequest:
    """One run for contiguous shards, so one engine load serves them all: Dagster's partition
    range tags (as `dagster asset materialize --partition-range` writes them), or the plain
    partition for one shard."""
    if len(keys) == 1:
        return RunRequest(run_key=run_key, partition_key=keys[0], tags=tags, asset_selection=asset_selection)
    tags = {**tags, **range_tags(keys[0], keys[-1])}
    return RunRequest(run_key=run_key, tags=tags, asset_selection=asset_selection)


def build_caption_sensor(settings: AutomationConfig, job_name: str) -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        job_name=job_name,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if settings.sensor_enabled else DefaultSensorStatus.STOPPED,
        description=f"Registers caption files dropped into {', '.join(settings.watch)} and runs their new shards.",
    )
    def caption_drop_sensor(context: SensorEvaluationContext, store: ParquetStore) -> SensorResult:
        """Files still being written (touched within `settle_seconds`) wait for a later tick; a
        file that cannot be registered is logged with its reason and does not block others."""
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        requests: list[RunRequest] = []
        waiting: list[str] = []
        failed: list[str] = []
        for drop in find_drops(settings):
            if seen.get(drop.path) == drop.signature:
                continue
            if now - drop.modified < settings.settle_seconds:
                waiting.append(drop.path)
                continue
            seen[drop.path] = drop.signature
            for spec in drop.specs:
                try:
                    registration = register_source(spec, store, context.instance)
                except Exception as error:  # any unreadable file: report it, go on with the rest
                    reason = f"{drop.path}: not registered ({type(error).__name__}: {error})"
                    context.log.warning(reason)
                    failed.append(reason)
                    continue
                context.log.info(
                    f"{drop.path}: {registration.items} items in {len(registration.shards)} shards, "
                    f"{len(registration.added)} new"
                )
                # Only new shards: a lost cursor re-registers without new runs, and the backfill
                # schedule picks up whatever is missing.
                for keys in chunks(registration.added, settings.max_shards_per_run):
                    run_key = f"{registration.source}:{keys[0]}...{keys[-1]}"
                    requests.append(shard_run_request(keys, {SOURCE_TAG: spec}, run_key=run_key))
        cursor = json.dumps(seen, sort_keys=True)
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        parts = [f"{len(waiting)} file(s) still being written"] if waiting else []
        parts += failed
        return SensorResult(skip_reason=SkipReason("; ".join(parts) or "no new caption files"), cursor=cursor)

    return caption_drop_sensor
