"""The bulk reads (the only non-public Dagster storage calls) on Dagster 1.13, on sqlite and on
Postgres (127.0.0.1:5432, trust auth): after real runs of per-shard assets with a blocking
check, they give what Dagster's per-partition public API gives."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lpt_assets.bulk_reads import (
    code_versions_of,
    latest_check_failures,
    latest_materializations,
    materialization_metadata,
    registered_among,
)
from lpt_assets.checks import failed_checks
from lpt_assets.partitions import shards
from tests.lpt_assets.test_backfill import JOB, KEYS, tick, toy_definitions

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@contextmanager
def postgres_instance(tmp_path) -> Iterator[DagsterInstance]:
    """A Dagster instance on a fresh Postgres database, dropped afterwards."""
    try:
        admin = psycopg2.connect(dbname="test", connect_timeout=5, **PG)
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({error})", pytrace=False)
    admin.autocommit = True
    name = f"lpt_bulk_{uuid.uuid4().hex[:10]}"
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
            temp_dir=str(tmp_path), overrides={"storage": {"postgres": {"postgres_db": db}}}
        ) as instance:
            yield instance
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request, tmp_path):
    if request.param == "sqlite":
        with instance_for_test(temp_dir=str(tmp_path)) as instance:
            yield instance
    else:
        with postgres_instance(tmp_path) as instance:
            yield instance


def test_bulk_reads_agree_with_the_public_per_partition_reads(instance):
    instance.add_dynamic_partitions(shards.name, KEYS[:6])
    assert registered_among(instance, shards.name, ["s01", "s05", "s99"]) == {"s01", "s05"}
    defs = toy_definitions(bad=frozenset({"s03"}), empty=frozenset({"s04", "s05"}))
    job = defs.resolve_job_def(JOB)
    assert job.execute_in_process(instance=instance, partition_key="s00").success
    range_run = job.execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: "s01", ASSET_PARTITION_RANGE_END_TAG: "s03"},
        raise_on_error=False,
    )
    assert not range_run.success  # s03's blocking check failed: simple_cots stopped for s01..s03
    assert job.execute_in_process(
        instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: "s04", ASSET_PARTITION_RANGE_END_TAG: "s05"}
    ).success

    for name, expected in [("captions", KEYS[:6]), ("mcqs", KEYS[:6]), ("simple_cots", ["s00", "s04", "s05"])]:
        asset = AssetKey(name)
        latest = latest_materializations(instance, asset)
        assert sorted(latest) == expected
        public = {r.partition_key: r for r in reversed(instance.fetch_materializations(asset, limit=100).records)}
        for key, record in latest.items():
            assert record.storage_id == public[key].storage_id
            assert record.data_version == public[key].asset_materialization.tags["dagster/data_version"]
        versions = code_versions_of(instance, asset, latest.values())
        assert set(versions.values()) == {defs.resolve_assets_def(name).code_versions_by_key[asset]}
    captions = latest_materializations(instance, AssetKey("captions"))
    metadata = materialization_metadata(
        instance, AssetKey("captions"), [captions[k].storage_id for k in ("s00", "s04")]
    )
    assert {storage_id: values["rows_out"].value for storage_id, values in metadata.items()} == {
        captions["s00"].storage_id: 1,
        captions["s04"].storage_id: 0,
    }

    failures = latest_check_failures(instance, list(defs.get_repository_def().asset_graph.asset_check_keys))
    assert {key: [(c.name, run) for c, run in found] for key, found in failures.items()} == {
        "s03": [("mcq_validity", range_run.run_id)]
    }
    assert failed_checks(instance, KEYS[:6]) == {"s03": ["mcqs:mcq_validity"]}
    assert failed_checks(instance, ["s03"], run_id=range_run.run_id) == {"s03": ["mcqs:mcq_validity"]}
    assert failed_checks(instance, ["s03"], run_id="another-run") == {}

    # and the schedule on top of them: s01, s02 need simple_cots; s03 is held back
    (request,) = tick(defs, instance).run_requests
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "s01",
        "s02",
    )
