"""Exports follow finished shards without anyone clicking, tried as a new user would: a manifest
dropped into the watched folder, the caption sensor's runs, then the exports sensor evaluated as
the daemon does (`evaluate_tick` on a real instance), its run executed, and the exports loaded by
`datasets`. Then the backfill schedule's run, a shard that fails its checks on a rerun, and a
new shard that costs only itself. Every role talks to the deterministic model server."""

import json
import time
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEventType,
    DagsterRunStatus,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from lpt.config import PipelineConfig
from lpt.tables import DPO_PAIRS, SFT_SAMPLES
from lpt_assets.export_automation import EXPORTS_SENSOR, ChangeCursor, pending_changes
from lpt_assets.location import EXPORT_JOB, PIPELINE_JOB, build_definitions
from lpt_assets.schedules import SCHEDULE_NAME
from lpt_resources.storage import ParquetStore
from tests.lpt_assets.drops import SAMPLE_ROWS, drop_manifest, evaluate_sensor
from tests.pipeline_model_server import PipelineModelServer, pipeline_config


def _config(root: Path, server: PipelineModelServer, **checks) -> PipelineConfig:
    base = pipeline_config(root, server).model_dump()
    base["automation"] = {"watch": [str(root / "incoming")], "settle_seconds": 0, "shard_size": 1}
    base["checks"] = {**base["checks"], **checks}
    return PipelineConfig.model_validate(base)


def _tick(defs, instance, cursor):
    with build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return defs.resolve_sensor_def(EXPORTS_SENSOR).evaluate_tick(context)


def _run(defs, job, instance, request):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags=request.tags, partition_key=request.partition_key, raise_on_error=False
    )


def _exported(root: Path) -> dict[str, set[str]]:
    exports = root / "exports"
    return {
        "llamafactory_sft": {p.stem for p in (exports / "llamafactory" / "sft").glob("*.jsonl")},
        "hf_dpo": {p.stem for p in (exports / "hf" / "dpo").glob("*.parquet")},
        "lacot": {p.stem for p in (exports / "lacot").glob("*.json")},
        "provenance": {p.stem for p in (exports / "provenance").glob("*.jsonl")},
    }


def _metadata(instance) -> dict:
    event = instance.get_latest_materialization_event(AssetKey("hf_dataset_export"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_sensor_and_schedule_runs_lead_to_current_exports(tmp_path):
    from datasets import load_dataset

    (tmp_path / "home").mkdir()
    with PipelineModelServer() as server, instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        config = _config(tmp_path, server)
        defs = build_definitions(config)
        store = ParquetStore(base=config.storage)
        first, second = "batch-01-all-00000", "batch-01-all-00001"

        # before anything is made, the exports sensor waits
        idle = _tick(defs, instance, None)
        assert not idle.run_requests
        cursor = idle.cursor

        drop_manifest(tmp_path / "incoming", "batch-01.jsonl", SAMPLE_ROWS[:2])
        (caption_request,) = evaluate_sensor(defs, instance).run_requests
        assert _run(defs, PIPELINE_JOB, instance, caption_request).success

        tick = _tick(defs, instance, cursor)
        (request,) = tick.run_requests
        assert request.job_name in (None, EXPORT_JOB)
        assert _run(defs, EXPORT_JOB, instance, request).success
        assert all(shards == {first, second} for shards in _exported(tmp_path).values())
        dpo = load_dataset(str(tmp_path / "exports" / "hf"), "dpo", split="train", cache_dir=str(tmp_path / "hf-cache"))
        stored = [p for key in (first, second) for p in store.read(DPO_PAIRS, key)]
        assert sorted(dpo["pair_id"]) == sorted(p.pair_id for p in stored)
        assert dpo[0]["images"][0].size[0] > 0  # decoded from the bytes in the Parquet
        assert _metadata(instance)["mode"] == "rebuild"  # a new export folder is built whole once

        # nothing changed since: no run
        quiet = _tick(defs, instance, tick.cursor)
        assert not quiet.run_requests and "no shard changed" in quiet.skip_message

        # the backfill schedule's run (a stage-3 change) leads to exports of exactly its shards
        harder = config.think_harder.model_copy(update={"cues": ("Hmm,",), "cue_weights": (1.0,)})
        changed = build_definitions(config.model_copy(update={"think_harder": harder}))
        with build_schedule_context(
            instance=instance, instance_ref=instance.get_ref(), repository_def=changed.get_repository_def()
        ) as context:
            (backfill,) = changed.resolve_schedule_def(SCHEDULE_NAME).evaluate_tick(context).run_requests
        assert _run(changed, PIPELINE_JOB, instance, backfill).success
        tick = _tick(changed, instance, quiet.cursor)
        (request,) = tick.run_requests
        assert _run(changed, EXPORT_JOB, instance, request).success
        metadata = _metadata(instance)
        assert (metadata["mode"], metadata["shards_written"], metadata["shards"]) == ("incremental", 2, 2)
        sft = [
            json.loads(line)
            for line in (tmp_path / "exports" / "llamafactory" / "sft" / f"{first}.jsonl").read_text().splitlines()
        ]
        stored_sft = store.read(SFT_SAMPLES, first)
        assert sorted(row["messages"][-1]["content"] for row in sft) == sorted(s.response for s in stored_sft)
        assert any("Hmm," in s.response for s in stored_sft if s.long_id)  # the rerun's long CoTs

        # a rerun of one shard with thresholds it cannot meet: the run stops at a check, and the
        # exports drop that shard's parts although its old files are still in storage
        strict = build_definitions(
            _config(tmp_path, server, short_accuracy=(0.99, 1.0), max_pair_type_share=0.0, min_rows=0).model_copy(
                update={"think_harder": harder}
            )
        )
        failed = strict.resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=instance, partition_key=second, raise_on_error=False
        )
        assert not failed.success
        tick = _tick(strict, instance, tick.cursor)
        (request,) = tick.run_requests
        assert _run(strict, EXPORT_JOB, instance, request).success
        metadata = _metadata(instance)
        assert list(metadata["held_back_by_checks"]) == [second]
        assert metadata["shards_dropped"] == [second] and metadata["shards"] == 1
        assert all(shards == {first} for shards in _exported(tmp_path).values())
        assert store.exists(DPO_PAIRS, second)
        dpo = load_dataset(str(tmp_path / "exports" / "hf"), "dpo", split="train", cache_dir=str(tmp_path / "hf-cache"))
        assert set(dpo["image_id"]) == {p.image_id for p in store.read(DPO_PAIRS, first)}

        # a new shard: the export run writes that shard alone
        drop_manifest(tmp_path / "incoming", "batch-02.jsonl", SAMPLE_ROWS[2:3])
        (caption_request,) = evaluate_sensor(changed, instance, cursor=None).run_requests
        assert _run(changed, PIPELINE_JOB, instance, caption_request).success
        tick = _tick(changed, instance, tick.cursor)
        (request,) = tick.run_requests
        assert _run(changed, EXPORT_JOB, instance, request).success
        metadata = _metadata(instance)
        assert (metadata["shards_written"], metadata["shards"]) == (1, 2)
        assert _exported(tmp_path)["hf_dpo"] == {first, "batch-02-all-00000"}


def _materialize(instance, run_id: str, asset: str, shard: str) -> None:
    """A materialization event as a run's step records it."""
    from dagster._core.events import DagsterEvent, StepMaterializationData
    from dagster._core.events.log import EventLogEntry

    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="lpt_pipeline",
        event_specific_data=StepMaterializationData(AssetMaterialization(asset_key=asset, partition=shard)),
    )
    instance.store_event(
        EventLogEntry(
            error_info=None, level=20, user_message="", run_id=run_id, timestamp=time.time(), dagster_event=event
        )
    )


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_shards_of_a_run_in_flight_wait_for_its_end(tmp_path, outcome):
    """A shard half redone by a run still in flight is not exported; once the run ends (either
    way) its shards are, although the cursor has moved past their events meanwhile."""
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        running = instance.create_run_for_job(
            build_definitions(PipelineConfig()).resolve_job_def(PIPELINE_JOB), status=DagsterRunStatus.STARTED
        )
        _materialize(instance, running.run_id, "sft_samples", "s-1")
        instance.report_runless_asset_event(AssetMaterialization(asset_key="dpo_pairs", partition="s-2"))
        first = pending_changes(instance, ChangeCursor())
        assert first.shards == ["s-2"] and first.cursor.waiting == (running.run_id,)
        _materialize(instance, running.run_id, "dpo_pairs", "s-1")
        assert pending_changes(instance, first.cursor).shards == []  # still in flight
        from dagster._core.events import DagsterEvent

        ended = DagsterEventType.RUN_SUCCESS if outcome == "success" else DagsterEventType.RUN_FAILURE
        instance.run_storage.handle_run_event(
            running.run_id, DagsterEvent(event_type_value=ended.value, job_name=PIPELINE_JOB)
        )
        after = pending_changes(instance, first.cursor)
        assert after.shards == ["s-1"] and after.cursor.waiting == ()
        assert pending_changes(instance, after.cursor).shards == []


def test_exports_sensor_waits_while_an_export_runs(tmp_path):
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        defs = build_definitions(PipelineConfig(storage=str(tmp_path / "data"), exports=str(tmp_path / "exports")))
        instance.report_runless_asset_event(AssetMaterialization(asset_key="sft_samples", partition="s-1"))
        first = _tick(defs, instance, None)  # a new instance: one run reconciles the export folder
        (request,) = first.run_requests
        assert request.run_key.startswith("exports-initial-")
        exporting = instance.create_run_for_job(defs.resolve_job_def(EXPORT_JOB), status=DagsterRunStatus.STARTED)
        instance.report_runless_asset_event(AssetMaterialization(asset_key="dpo_pairs", partition="s-2"))
        waiting = _tick(defs, instance, first.cursor)
        assert not waiting.run_requests and "in flight" in waiting.skip_message
        instance.delete_run(exporting.run_id)
        (request,) = _tick(defs, instance, first.cursor).run_requests  # the change did not get lost
        assert request.run_key != f"exports-initial-{ChangeCursor.model_validate_json(first.cursor).after}"
