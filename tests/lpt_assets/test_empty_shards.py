"""A run over shards with no usable caption never asks for the `gpu` pool: with the pool at
zero slots (every GPU busy elsewhere) it still finishes at once, its captions recorded and its
generation steps skipped."""

import json
import threading

from dagster import AssetKey, DagsterEventType, instance_for_test

from lpt.tables import CAPTIONS_QUARANTINE
from lpt_assets.assets.generate import GPU_POOL
from lpt_assets.cli import run_pipeline
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore
from tests.pipeline_model_server import PipelineModelServer, pipeline_config


def test_a_run_of_empty_shards_skips_generation_without_the_gpu_pool(tmp_path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    manifest = folder / "gone.jsonl"
    rows = [{"image": f"images/{n}.png", "description": "a photo", "image_id": n} for n in ("a1", "a2", "b1")]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))  # no image exists
    (tmp_path / "home").mkdir()
    with PipelineModelServer() as server, instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        config = pipeline_config(tmp_path, server)
        store = ParquetStore(base=config.storage)
        keys = register_source(f"manifest:{manifest}?shard_size=2&name=gone", store, instance).shards
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 0)

        run = threading.Thread(target=run_pipeline, args=(instance, config, keys), daemon=True)
        run.start()
        run.join(timeout=180)
        assert not run.is_alive(), "the run waited for the gpu pool"

        [record] = instance.get_run_records(limit=1, filters=None, order_by="create_timestamp", ascending=True)
        events = instance.all_logs(record.dagster_run.run_id)
        skipped = {
            event.step_key
            for event in events
            if event.dagster_event and event.dagster_event.event_type == DagsterEventType.STEP_SKIPPED
        }
        assert {"mcqs", "simple_cots", "long_cots", "verified"} <= skipped
        assert record.dagster_run.is_success
        for key in keys:
            assert store.count(CAPTIONS_QUARANTINE, key) > 0
            assert instance.get_latest_materialization_event(AssetKey("captions")) is not None
        assert instance.get_latest_materialization_event(AssetKey("mcqs")) is None
        assert instance.get_latest_materialization_event(AssetKey("usable_captions")) is None
