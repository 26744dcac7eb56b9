"""The caption sensor and the backfill schedule on a real temporary instance: a manifest dropped
into a watched folder becomes registered shards and runs that materialize them (with the small
real CPU model); the schedule then requests exactly the shards that are missing or stale."""

import json
import shutil

import pytest
from dagster import AssetKey, DagsterRunStatus, build_schedule_context, instance_for_test
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lpt.config import load_config
from lpt_assets.location import PIPELINE_JOB, build_definitions
from lpt_assets.schedules import SCHEDULE_NAME
from lpt_assets.sensors import SENSOR_NAME
from tests.lpt_assets.drops import SAMPLE_ROWS, SKIMAGE_DATA, drop_manifest, evaluate_sensor, make_config

PER_SHARD = ["captions", "usable_captions", "mcqs", "simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]


def evaluate_schedule(defs, instance):
    # Entered and left, as the daemon does: the instance the context opens from the ref must be
    # closed again, or it stays Dagster's current one for later definitions loads.
    with build_schedule_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=defs.get_repository_def()
    ) as context:
        return defs.resolve_schedule_def(SCHEDULE_NAME).evaluate_tick(context)


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


@pytest.mark.slow
def test_dropped_manifest_is_registered_and_its_runs_materialize_every_asset(dropped_and_run):
    _, _, _, instance, first = dropped_and_run
    keys = ["batch-01-all-00000", "batch-01-all-00001"]
    assert instance.get_dynamic_partitions("shards") == keys
    # both shards in one run (one engine load), keyed so the daemon never requests it twice
    (request,) = first.run_requests
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == keys[0]
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == keys[1]
    assert request.run_key == "batch-01:batch-01-all-00000...batch-01-all-00001"
    for name in PER_SHARD:
        assert instance.get_materialized_partitions(AssetKey(name)) == set(keys), name


@pytest.mark.slow
def test_a_second_tick_requests_nothing(dropped_and_run):
    _, _, defs, instance, first = dropped_and_run
    again = evaluate_sensor(defs, instance, cursor=first.cursor)
    assert not again.run_requests
    assert again.skip_message == "no new caption files"
    assert instance.get_dynamic_partitions("shards") == ["batch-01-all-00000", "batch-01-all-00001"]


@pytest.mark.slow
def test_schedule_requests_exactly_the_missing_or_stale_shards(dropped_and_run):
    root, config, defs, instance, first = dropped_and_run
    keys = ["batch-01-all-00000", "batch-01-all-00001"]
    idle = evaluate_schedule(defs, instance)
    assert not idle.run_requests and "up to date" in idle.skip_message

    # stage 3 changed: stage 3 and later for both shards, in one run; stages 1 and 2 stay
    harder = config.think_harder.model_copy(update={"cues": ("Hmm,",), "cue_weights": (1.0,)})
    changed = build_definitions(config.model_copy(update={"think_harder": harder}))
    (request,) = evaluate_schedule(changed, instance).run_requests
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == tuple(keys)
    assert set(request.asset_selection) == {AssetKey(n) for n in ["long_cots", "verified", "sft_samples", "dpo_pairs"]}

    # a run already in progress over those shards: nothing to add
    running = instance.create_run_for_job(
        changed.resolve_job_def(PIPELINE_JOB), status=DagsterRunStatus.STARTED, tags=dict(request.tags)
    )
    waiting = evaluate_schedule(changed, instance)
    assert not waiting.run_requests and "2 shards in flight" in waiting.skip_message
    instance.delete_run(running.run_id)

    # a newly registered shard nobody ran: only it, every stage
    drop_manifest(root / "incoming", "batch-02.jsonl", SAMPLE_ROWS[2:3])
    evaluate_sensor(defs, instance, cursor=first.cursor)
    (request,) = evaluate_schedule(defs, instance).run_requests
    assert request.partition_key == "batch-02-all-00000"
    assert set(request.asset_selection) == {AssetKey(n) for n in PER_SHARD}


def test_files_still_being_written_wait(tmp_path, instance):
    defs = build_definitions(make_config(tmp_path, settle_seconds=3600))
    drop_manifest(tmp_path / "incoming", "fresh.jsonl", SAMPLE_ROWS[:1])
    result = evaluate_sensor(defs, instance)
    assert not result.run_requests and "1 file(s) still being written" in result.skip_message
    assert instance.get_dynamic_partitions("shards") == []
    assert json.loads(result.cursor) == {}  # not marked as seen: a later tick takes it


def test_a_broken_file_is_reported_and_does_not_block_others(tmp_path, instance):
    defs = build_definitions(make_config(tmp_path, max_shards_per_run=2))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "broken.parquet").write_bytes(b"not a parquet file")
    drop_manifest(incoming, "good.jsonl", SAMPLE_ROWS[:3])
    result = evaluate_sensor(defs, instance)
    # three shards, at most two per run: two runs over contiguous ranges
    assert instance.get_dynamic_partitions("shards") == ["good-all-00000", "good-all-00001", "good-all-00002"]
    assert [(r.tags.get(ASSET_PARTITION_RANGE_START_TAG), r.partition_key) for r in result.run_requests] == [
        ("good-all-00000", None),
        (None, "good-all-00002"),
    ]
    assert str(incoming / "broken.parquet") in json.loads(result.cursor)  # not retried until it changes
    # the reason reaches the log; alone in a tick it is the skip message
    (incoming / "broken.parquet").write_bytes(b"still not a parquet file")  # changed: tried again
    again = evaluate_sensor(defs, instance, cursor=result.cursor)
    assert not again.run_requests
    assert "broken.parquet: not registered" in again.skip_message


def test_a_docci_folder_drop_registers_its_train_split(tmp_path, instance):
    defs = build_definitions(make_config(tmp_path, shard_size=2))
    folder = tmp_path / "incoming" / "docci_2026"
    (folder / "images").mkdir(parents=True)
    rows = []
    for index, row in enumerate(SAMPLE_ROWS[:3]):
        shutil.copy(SKIMAGE_DATA / row["file_name"], folder / "images" / row["file_name"])
        split = "test" if index == 2 else "train"
        rows.append(
            {
                "example_id": row["image_id"],
                "split": split,
                "image_file": row["file_name"],
                "description": row["description"],
            }
        )
    (folder / "docci_descriptions.jsonlines").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_sensor(defs, instance)
    assert instance.get_dynamic_partitions("shards") == ["docci-2026-train-00000"]
    (request,) = result.run_requests
    assert request.partition_key == "docci-2026-train-00000"
    assert request.tags["lpt/source"].startswith(f"docci:{folder}?split=train")


def test_sensor_and_schedule_follow_their_switches(tmp_path):
    on = build_definitions(make_config(tmp_path))
    off = build_definitions(make_config(tmp_path, sensor_enabled=False, schedule_enabled=False))
    assert on.resolve_sensor_def(SENSOR_NAME).default_status.value == "RUNNING"
    assert on.resolve_schedule_def(SCHEDULE_NAME).default_status.value == "RUNNING"
    assert off.resolve_sensor_def(SENSOR_NAME).default_status.value == "STOPPED"
    assert off.resolve_schedule_def(SCHEDULE_NAME).default_status.value == "STOPPED"


def test_watched_folders_resolve_against_the_config_file(tmp_path):
    (tmp_path / "lpt.toml").write_text('[automation]\nwatch = ["drops", "/srv/captions"]\nmax_shards_per_run = 4\n')
    automation = load_config(tmp_path / "lpt.toml").automation
    assert automation.watch == (str(tmp_path / "drops"), "/srv/captions")
    assert automation.max_shards_per_run == 4
