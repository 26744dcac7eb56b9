"""What does orchestration cost at 1k, 10k and 100k registered shards, and the pure method per item?

For each size it builds a real temporary Dagster instance (sqlite; Postgres on 127.0.0.1:5432
for the --postgres sizes, in a fresh database dropped afterwards) and times, with the code
location's real definitions: registering every shard; registering one more; one backfill
schedule tick (`evaluate_tick`, as the daemon calls it) with nothing materialized and with 10%
of the shards materialized (runless materializations with the code and data versions a run
records, 16 shards per run); one caption-sensor tick that registers a one-image drop; and
`failed_checks` over every shard. Side by side, in the same process, the code before this
change (read from git at BEFORE_REV) where it finishes in reasonable time (--old-up-to).
Then parse + grade + verify per short and per long CoT (reference-run outputs), new and old.
Prints JSON.

    python -m benchmarks.scale [--sizes 1000 10000 100000] [--postgres 10000] [--old-up-to 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.definitions.data_version import CODE_VERSION_TAG, DATA_VERSION_TAG

from lpt.config import PipelineConfig
from lpt.records import LongCot, SimpleCot, stable_id
from lpt_assets.checks import check_keys, failed_checks
from lpt_assets.location import PIPELINE_JOB, build_definitions
from lpt_assets.partitions import chunks, shards
from lpt_assets.registry import add_shards
from lpt_assets.schedules import SCHEDULE_NAME
from lpt_assets.sensors import SENSOR_NAME

REPO = Path(__file__).resolve().parent.parent
BEFORE_REV = "e1e8d54"  # main before this change
RUN_SIZE = 16  # shards per simulated run: one data version per asset per run
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def load_before(path: str, name: str, replace: dict[str, str] | None = None):
    """A module as it was at BEFORE_REV (None outside a git checkout)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_REV}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for old, new in (replace or {}).items():
        source = source.replace(old, new)
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return round(time.perf_counter() - started, 3), result


@contextmanager
def make_instance(backend: str, root: Path) -> Iterator[DagsterInstance]:
    if backend == "sqlite":
        with instance_for_test(temp_dir=str(root)) as instance:
            yield instance
        return
    import psycopg2

    admin = psycopg2.connect(dbname="test", **PG)
    admin.autocommit = True
    name = f"lpt_scale_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    db = {
        "hostname": PG["host"],
        "port": PG["port"],
        "username": PG["user"],
        "password": "",
        "db_name": name,
        "scheme": "postgresql+psycopg2",
    }
    try:
        with instance_for_test(
            temp_dir=str(root), overrides={"storage": {"postgres": {"postgres_db": db}}}
        ) as instance:
            yield instance
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def materialize(instance: DagsterInstance, defs, keys: list[str]) -> None:
    """Materializations as a run records them (code and data versions, one data version per
    asset per run of RUN_SIZE shards), inserted in bulk into the event log's tables: reporting
    70k events one by one would take longer than everything measured here."""
    from dagster import DagsterEventType
    from dagster._core.events import DagsterEvent, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
    from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable
    from dagster._serdes import serialize_value

    graph = defs.resolve_asset_graph()
    in_job = set(defs.resolve_job_def(PIPELINE_JOB).asset_layer.executable_asset_keys)
    assets = [key for key in graph.toposorted_asset_keys if key in in_job]
    storage = instance.event_log_storage
    now = time.time()
    with storage.index_connection() as conn:
        for index, run in enumerate(chunks(keys, RUN_SIZE)):
            for asset in assets:
                code = graph.get(asset).code_version
                tags = {CODE_VERSION_TAG: code, DATA_VERSION_TAG: stable_id(asset.to_user_string(), code, index)}
                metadata = {"rows_out": 64} if asset == AssetKey("captions") else {}
                for key in run:
                    materialization = AssetMaterialization(asset_key=asset, partition=key, tags=tags, metadata=metadata)
                    event = EventLogEntry(
                        user_message="",
                        level=20,
                        job_name=RUNLESS_JOB_NAME,
                        run_id=RUNLESS_RUN_ID,
                        error_info=None,
                        timestamp=now,
                        dagster_event=DagsterEvent(
                            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                            job_name=RUNLESS_JOB_NAME,
                            event_specific_data=StepMaterializationData(materialization),
                        ),
                    )
                    result = conn.execute(
                        SqlEventLogStorageTable.insert().values(
                            run_id=RUNLESS_RUN_ID,
                            event=serialize_value(event),
                            dagster_event_type=DagsterEventType.ASSET_MATERIALIZATION.value,
                            timestamp=datetime.fromtimestamp(now, UTC).replace(tzinfo=None),
                            asset_key=asset.to_string(),
                            partition=key,
                        )
                    )
                    conn.execute(
                        AssetEventTagsTable.insert().values(
                            event_id=result.inserted_primary_key[0],
                            asset_key=asset.to_string(),
                            key=DATA_VERSION_TAG,
                            value=tags[DATA_VERSION_TAG],
                            event_timestamp=datetime.fromtimestamp(now, UTC).replace(tzinfo=None),
                        )
                    )


def schedule_tick(defs, instance) -> tuple[float, int]:
    with build_schedule_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=defs.get_repository_def()
    ) as context:
        seconds, result = timed(defs.resolve_schedule_def(SCHEDULE_NAME).evaluate_tick, context)
    return seconds, len(result.run_requests or [])


def old_tick(before, defs, instance) -> float:
    """The old tick's work (it then raised CheckError on several requests): per-shard statuses."""
    graph = defs.resolve_asset_graph()
    in_job = set(defs.resolve_job_def(PIPELINE_JOB).asset_layer.executable_asset_keys)
    assets = [key for key in graph.toposorted_asset_keys if key in in_job]

    def work() -> None:
        keys = instance.get_dynamic_partitions(shards.name)
        busy = before.shards_in_flight(instance, keys)
        before.work_needed(before.stale_resolver(instance, graph), assets, [key for key in keys if key not in busy])

    return timed(work)[0]


def old_register_one(instance: DagsterInstance, key: str) -> None:
    known = set(instance.get_dynamic_partitions(shards.name))
    if key not in known:
        instance.add_dynamic_partitions(shards.name, [key])


def old_failed_checks(instance: DagsterInstance, keys: list[str]) -> None:
    from dagster._core.event_api import PartitionKeyFilter
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    done = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    for check_key in check_keys():
        for key in keys:
            instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=1, status=done, partition_filter=PartitionKeyFilter(key=key)
            )


def sensor_tick(defs, instance) -> float:
    with build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
    ) as context:
        seconds, result = timed(defs.resolve_sensor_def(SENSOR_NAME).evaluate_tick, context)
    assert len(result.run_requests) == 1, result
    return seconds


def drop(folder: Path) -> None:
    import skimage.data
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(folder / "images" / "one.jpg")
    (folder / "drop.jsonl").write_text(
        json.dumps(
            {
                "image": "images/one.jpg",
                "description": "An astronaut in a white suit holds a helmet.",
                "image_id": "one",
            }
        )
        + "\n"
    )


def orchestration(backend: str, size: int, old_up_to: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lpt-bench-scale-"))
    try:
        config = PipelineConfig.model_validate(
            {
                "storage": str(work / "data"),
                "exports": str(work / "exports"),
                "automation": {"watch": [str(work / "incoming")], "settle_seconds": 0, "shard_size": 1},
            }
        )
        defs = build_definitions(config)
        before = load_before("lpt_assets/schedules.py", "lpt_schedules_before")
        old = size <= old_up_to and before is not None
        (work / "home").mkdir()
        row: dict = {"backend": backend, "shards": size}
        with make_instance(backend, work / "home") as instance:
            keys = [f"bench-{i:07d}" for i in range(size)]
            row["register_all_s"], _ = timed(add_shards, instance, keys)
            row["register_one_s"], _ = timed(add_shards, instance, ["bench-extra-0"])
            if old:
                row["old_register_one_s"], _ = timed(old_register_one, instance, "bench-extra-1")
            row["tick_none_s"], row["tick_none_runs"] = schedule_tick(defs, instance)
            if old:
                row["old_tick_none_s"] = old_tick(before, defs, instance)
            materialize(instance, defs, keys[: size // 10])
            row["tick_10pct_s"], row["tick_10pct_runs"] = schedule_tick(defs, instance)
            row["tick_10pct_again_s"], _ = schedule_tick(defs, instance)  # data versions already known
            if old:
                row["old_tick_10pct_s"] = old_tick(before, defs, instance)
            drop(work / "incoming")
            row["sensor_tick_s"] = sensor_tick(defs, instance)
            row["failed_checks_s"], _ = timed(failed_checks, instance, keys)
            if old:  # one query per check per shard: timed on 100 shards, beside the new read of those 100
                row["failed_checks_100_s"], _ = timed(failed_checks, instance, keys[:100])
                row["old_failed_checks_100_s"], _ = timed(old_failed_checks, instance, keys[:100])
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pure_method(repeats: int) -> dict:
    """parse + grade + verify per short and per long CoT on the reference run's outputs."""
    from lpt.config import VerifyConfig
    from lpt.verify import verify_long, verify_short
    from tests.lpt.conftest import _jsonl, _reference_presentation
    from tests.lpt.test_reference_verdicts import _mcq

    parse = load_before("lpt/parse.py", "lpt_parse_before")
    grade = parse and load_before(
        "lpt/grade.py", "lpt_grade_before", {"from lpt.parse import": "from lpt_parse_before import"}
    )
    verify = grade and load_before(
        "lpt/verify.py",
        "lpt_verify_before",
        {
            "from lpt.parse import": "from lpt_parse_before import",
            "from lpt.grade import": "from lpt_grade_before import",
        },
    )
    config = VerifyConfig()
    cases = []
    for row in _jsonl("stage2_simple_cot_samples.jsonl"):
        item = _mcq(row, _reference_presentation(row))
        for index, text in enumerate(row["outputs"]):
            cot = SimpleCot(
                cot_id=f"{row['mcq_id']}-{index}",
                mcq_id=row["mcq_id"],
                image_id=row["image_id"],
                sample_index=index,
                text=text.removeprefix("<think>"),
                finish_reason="stop",
                prompt_tokens=1,
                completion_tokens=1,
                model="r",
                stand_in=False,
            )
            other = row["outputs"][(index + 1) % len(row["outputs"])]
            long = LongCot(
                long_id=f"{cot.cot_id}-long",
                cot_id=cot.cot_id,
                mcq_id=cot.mcq_id,
                image_id=cot.image_id,
                sample_index=0,
                short_think=text.split("</think>")[0].removeprefix("<think>").strip(),
                separator="\n\n",
                cue="Wait,",
                continuation=" " + other.removeprefix("<think>") * 3,
                finish_reason="stop",
                attempts=1,
                prompt_tokens=1,
                completion_tokens=1,
                model="r",
            )
            cases.append((cot, long, item))

    def per_item_ms(short_fn, long_fn) -> tuple[float, float]:
        best_short = best_long = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            shorts = [short_fn(cot, item, config) for cot, _, item in cases]
            best_short = min(best_short, (time.perf_counter() - started) / len(cases))
            started = time.perf_counter()
            for (_, long, item), short in zip(cases, shorts, strict=True):
                long_fn(long, short, item, config)
            best_long = min(best_long, (time.perf_counter() - started) / len(cases))
        return round(best_short * 1000, 3), round(best_long * 1000, 3)

    result = {"items": len(cases), "long_chars_mean": round(sum(len(c[1].continuation) for c in cases) / len(cases))}
    result["short_ms"], result["long_ms"] = per_item_ms(verify_short, verify_long)
    if verify is not None:
        result["old_short_ms"], result["old_long_ms"] = per_item_ms(verify.verify_short, verify.verify_long)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--postgres", type=int, nargs="*", default=[10000])
    parser.add_argument("--old-up-to", type=int, default=1000, help="largest size at which to time the old code")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for backend, sizes in (("sqlite", args.sizes), ("postgres", args.postgres)):
        for size in sorted(sizes):
            rows.append(orchestration(backend, size, args.old_up_to))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    pure = pure_method(args.repeats)
    print(
        json.dumps(
            {"benchmark": "orchestration and pure method at scale", "orchestration": rows, "pure_method": pure},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
