"""One real run shared by the sensor, schedule and staleness tests: a two-image manifest dropped
into a watched folder, sensed, and the requested runs executed with the small CPU model."""

import pytest
from dagster import instance_for_test

from lpt_assets.location import PIPELINE_JOB, build_definitions
from tests.lpt_assets.drops import SAMPLE_ROWS, drop_manifest, evaluate_sensor, make_config


@pytest.fixture(scope="session")
def dropped_and_run(tmp_path_factory):
    """(root, config, defs, instance, first sensor tick) after the tick's runs succeeded."""
    root = tmp_path_factory.mktemp("sensor")
    config = make_config(root)
    defs = build_definitions(config)
    (root / "home").mkdir()
    with instance_for_test(temp_dir=str(root / "home")) as instance:
        drop_manifest(root / "incoming", "batch-01.jsonl", SAMPLE_ROWS[:2])
        first = evaluate_sensor(defs, instance)
        for request in first.run_requests:
            result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
                instance=instance, tags=request.tags, partition_key=request.partition_key
            )
            assert result.success
        yield root, config, defs, instance, first
