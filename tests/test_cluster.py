"""The cluster for real: a fresh Postgres database as Dagster's storage (dagster_home/cluster/
dagster.yaml), Celery workers started here as subprocesses (dagster_home/cluster/celery.yaml),
and `dagster job execute` shipping each step to them: generation steps to the GPU queue's
worker, the rest to the CPU queue's worker; the same over RabbitMQ. A service that is down
fails the test by name. Also: the executor's environment settings, the worker config and the
Kubernetes files validated against dagster-celery's and dagster-k8s's own schemas."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import psycopg2
import pytest
import redis
import yaml
from celery import Celery
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, validate_run_config
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_celery.cli import get_validated_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import USER_DEFINED_K8S_JOB_CONFIG_SCHEMA
from kombu import Connection

from lpt.config import load_config
from lpt_assets.executors import CELERY_QUEUE_TAG, K8S_CONFIG_TAG, celery_config, executor_from_env, gpu_op_tags
from lpt_assets.location import PIPELINE_JOB, build_definitions
from tests.pipeline_model_server import PipelineModelServer
from tests.small_config import SMALL_TOML

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLUSTER = REPO / "dagster_home" / "cluster"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/7"  # a database number nobody else here uses
AMQP_URL = "pyamqp://guest:guest@127.0.0.1:5672//"
GPU_STEPS = {"mcqs", "simple_cots", "long_cots"}
SCORING_STEP = "rationale_scores"  # a GPU step too, where `[scoring]` is on
CPU_STEPS = {"captions", "usable_captions", "verified", "sft_samples", "dpo_pairs"}


def _require(service: str, check) -> None:
    try:
        check()
    except Exception as error:  # any failure to reach it: say which service, never skip
        pytest.fail(f"{service} is not reachable ({error}); the cluster test needs it running", pytrace=False)


@pytest.fixture
def database():
    """A fresh Postgres database for Dagster's storage, dropped at the end."""
    _require(
        "PostgreSQL on 127.0.0.1:5432", lambda: psycopg2.connect(dbname="postgres", connect_timeout=5, **PG).close()
    )
    name = f"lpt_cluster_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _cluster_env(tmp_path: Path, database: str, broker: str, backend: str, tag: str, model_url: str) -> dict:
    """What every node of the cluster shares: DAGSTER_HOME with the cluster dagster.yaml, the
    Postgres and Celery settings, one config, and every role pointed at one model server (as a
    cluster points them at `vllm serve`; a real HTTP server answering each stage in milliseconds,
    so the test measures the cluster, not a 2-core CPU generating text)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(CLUSTER / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "lpt.toml").write_text(SMALL_TOML)  # storage: tmp_path/data, shared by every process
    engines = {
        f"LPT_{role}_{field}": value
        for role in ("ASK", "VLM", "REASONER")
        for field, value in {"KIND": "openai", "BASE_URL": model_url, "MODEL": "fake", "SERVER_KIND": "vllm"}.items()
    }
    return {
        **engines,
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": database,
        "LPT_CONFIG": str(tmp_path / "lpt.toml"),
        "LPT_EXECUTOR": "celery",
        "LPT_CELERY_BROKER": broker,
        "LPT_CELERY_BACKEND": backend,
        "LPT_CELERY_QUEUE": f"lpt-test-{tag}-cpu",
        "LPT_CELERY_GPU_QUEUE": f"lpt-test-{tag}-gpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


class Workers:
    """Real Celery workers through `dagster-celery worker start`, one per queue, each in its
    own process group so the test stops exactly what it started."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, queue: str) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = (
            subprocess.Popen(
                [
                    BIN / "dagster-celery",
                    "worker",
                    "start",
                    "-A",
                    "dagster_celery.app",
                    "-y",
                    CLUSTER / "celery.yaml",
                    "-q",
                    queue,
                    "-n",
                    name,
                    "--",
                    "--pool",
                    "solo",
                ],
                env=self.env,
                cwd=self.logs,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            log,
        )

    def wait_ready(self, broker: str, timeout: float = 90) -> None:
        host = socket.gethostname()
        wanted = {f"{name}@{host}" for name in self.procs}
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        with Celery(broker=broker) as app:
            while time.monotonic() < deadline and not wanted <= seen:
                for name, (proc, _) in self.procs.items():
                    assert proc.poll() is None, f"worker {name} exited:\n{self.log(name)}"
                seen |= {n for reply in app.control.ping(timeout=1.0) or [] for n in reply}
        if not wanted <= seen:
            pytest.fail(f"workers {sorted(wanted - seen)} did not answer a ping in {timeout}s")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    def stop(self) -> None:
        """SIGTERM to each worker's group (dagster-celery and its `celery` child), SIGKILL to
        whatever is left after 30 s."""
        for proc, _ in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc, log in self.procs.values():
            while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
                proc.poll()  # reap the group leader as soon as it exits
                time.sleep(0.2)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False once nothing is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _run(args, env, cwd):
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def _create_schema(env: dict, cwd: Path) -> None:
    """Dagster's tables made once, as a deployment does before its nodes start: processes
    opening an empty database together race to create them (DuplicateObject)."""
    _run([BIN / "dagster", "instance", "migrate"], env, cwd)


def _instance(env: dict, monkeypatch) -> DagsterInstance:
    """The Postgres-backed instance the workers wrote to, opened from the same DAGSTER_HOME."""
    for key in ["DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"]:
        monkeypatch.setenv(key, env[key])
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def _step_workers(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker that reported executing it."""
    out = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            out[entry.step_key] = metadata["Celery worker"].value
    return out


def test_executor_from_env_defaults_and_errors():
    assert executor_from_env({}).name == "in_process"
    assert executor_from_env({"LPT_EXECUTOR": "multiprocess", "LPT_MAX_CONCURRENT": "2"}).name == "multiprocess"
    assert executor_from_env({"LPT_EXECUTOR": "celery"}).name == "celery"
    assert executor_from_env({"LPT_EXECUTOR": "k8s"}).name == "k8s"
    with pytest.raises(ValueError, match="LPT_EXECUTOR must be one of"):
        executor_from_env({"LPT_EXECUTOR": "slurm"})
    with pytest.raises(ValueError, match="LPT_MAX_CONCURRENT"):
        executor_from_env({"LPT_EXECUTOR": "multiprocess", "LPT_MAX_CONCURRENT": "many"})


def test_celery_config_keeps_urls_out_of_run_config():
    """A set broker URL may carry a password: the config names the variable, never the value."""
    redis_url = celery_config({"LPT_CELERY_BROKER": "redis://:secret@host:6379/1"})
    assert redis_url["broker"] == {"env": "LPT_CELERY_BROKER"} == redis_url["backend"]
    assert "secret" not in json.dumps(redis_url)
    amqp = celery_config({"LPT_CELERY_BROKER": "pyamqp://u:p@host//", "LPT_CELERY_QUEUE": "cpu"})
    assert amqp["backend"] == "rpc://" and amqp["config_source"] == {"task_default_queue": "cpu"}
    default = celery_config({})
    assert default["broker"] == default["backend"] == "redis://127.0.0.1:6379/0"
    assert celery_config({"LPT_CELERY_INCLUDE": "a, b"})["include"] == ["a", "b"]


def test_gpu_tags_and_worker_config_are_valid(monkeypatch):
    tags = gpu_op_tags({"LPT_CELERY_GPU_QUEUE": "big-gpus"})
    assert tags[CELERY_QUEUE_TAG] == "big-gpus"
    assert validate_config(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA, json.loads(tags[K8S_CONFIG_TAG])).success
    custom = {"pod_spec_config": {"node_selector": {"gpu": "h100"}}}
    assert json.loads(gpu_op_tags({"LPT_K8S_GPU_STEP_CONFIG": json.dumps(custom)})[K8S_CONFIG_TAG]) == custom
    with pytest.raises(ValueError, match="LPT_K8S_GPU_STEP_CONFIG"):
        gpu_op_tags({"LPT_K8S_GPU_STEP_CONFIG": "{nodes"})
    # the worker side reads the executor's variables: `dagster-celery worker start -y celery.yaml`
    monkeypatch.setenv("LPT_CELERY_BROKER", "pyamqp://guest:guest@mq:5672//")
    monkeypatch.setenv("LPT_CELERY_BACKEND", "rpc://")
    worker = get_validated_config(str(CLUSTER / "celery.yaml"))
    assert (worker["broker"], worker["backend"]) == ("pyamqp://guest:guest@mq:5672//", "rpc://")
    assert worker["config_source"]["worker_prefetch_multiplier"] == 1


def test_generation_steps_carry_the_gpu_queue(tmp_path, monkeypatch):
    (tmp_path / "lpt.toml").write_text(SMALL_TOML + "\n[scoring]\nenabled = true\n")
    monkeypatch.setenv("LPT_EXECUTOR", "celery")
    monkeypatch.setenv("LPT_CELERY_GPU_QUEUE", "gpu-pool-a")
    job = build_definitions(load_config(tmp_path / "lpt.toml")).resolve_job_def(PIPELINE_JOB)
    assert job.executor_def.name == "celery"
    queues = {node.name: node.definition.tags.get(CELERY_QUEUE_TAG) for node in job.graph.nodes}
    assert {name for name, queue in queues.items() if queue == "gpu-pool-a"} == GPU_STEPS | {SCORING_STEP}
    assert CPU_STEPS < {name for name, queue in queues.items() if queue is None}  # asset checks too


def test_k8s_instance_and_run_config_validate(tmp_path, monkeypatch):
    """k8s.yaml against Dagster's instance schema and the K8sRunLauncher's own schema, and
    k8s-run-config.yaml against the pipeline job run with LPT_EXECUTOR=k8s."""
    shutil.copy(CLUSTER / "k8s.yaml", tmp_path / "dagster.yaml")
    instance_config, _ = dagster_instance_config(str(tmp_path))
    launcher = instance_config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    (tmp_path / "lpt.toml").write_text(SMALL_TOML)
    monkeypatch.setenv("LPT_EXECUTOR", "k8s")
    job = build_definitions(load_config(tmp_path / "lpt.toml")).resolve_job_def(PIPELINE_JOB)
    run_config = yaml.safe_load((CLUSTER / "k8s-run-config.yaml").read_text())
    assert validate_run_config(job, run_config)["execution"]["k8s"]["max_concurrent"] == 4
    assert set(run_config["execution"]["config"]["per_step_k8s_config"]) == GPU_STEPS | {SCORING_STEP}
    # the cluster's own dagster.yaml passes the same instance validation
    shutil.copy(CLUSTER / "dagster.yaml", tmp_path / "dagster.yaml")
    assert (
        dagster_instance_config(str(tmp_path))[0]["storage"]["postgres"]["postgres_db"]["scheme"]
        == "postgresql+psycopg2"
    )


@pytest.mark.slow
def test_pipeline_two_shards_on_postgres_with_celery_workers(tmp_path, database, monkeypatch):
    _require("Redis on 127.0.0.1:6379", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping())
    tag = uuid.uuid4().hex[:8]
    server = PipelineModelServer().start()
    env = _cluster_env(tmp_path, database, REDIS_URL, REDIS_URL, tag, server.base_url)
    workers = Workers(env, tmp_path)
    cpu, gpu = f"cpu-{tag}", f"gpu-{tag}"
    try:
        _create_schema(env, tmp_path)
        workers.start(cpu, env["LPT_CELERY_QUEUE"])
        workers.start(gpu, env["LPT_CELERY_GPU_QUEUE"])
        out = _run([BIN / "lpt", "register", f"sample?limit=2&shard_size=1&name=c{tag}"], env, tmp_path)
        keys = [f"c{tag}-train-00000", f"c{tag}-train-00001"]
        assert all(f"{key}  (new)" in out for key in keys), out
        workers.wait_ready(REDIS_URL)
        _run(
            [
                BIN / "dagster",
                "job",
                "execute",
                "-m",
                "lpt_assets.definitions",
                "-j",
                "lpt_pipeline",
                "--tags",
                json.dumps({ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[1]}),
            ],
            env,
            tmp_path,
        )
        with _instance(env, monkeypatch) as instance:
            [run] = instance.get_runs()
            assert run.status == DagsterRunStatus.SUCCESS
            for asset in GPU_STEPS | CPU_STEPS:
                assert instance.get_materialized_partitions(AssetKey(asset)) == set(keys), asset
                for key in keys:  # every asset but the usable_captions gate writes a table
                    assert asset == "usable_captions" or (tmp_path / "data" / asset / f"{key}.parquet").exists(), (
                        asset,
                        key,
                    )
            for key in keys:  # the GPU worker's steps really asked the model server
                assert pl.read_parquet(tmp_path / "data" / "long_cots" / f"{key}.parquet").height > 0
            host = socket.gethostname()
            by_step = _step_workers(instance, run.run_id)
            # generation steps on the GPU queue's worker; the rest (asset checks too) on the CPU one
            assert {step for step, worker in by_step.items() if worker == f"{gpu}@{host}"} == GPU_STEPS, by_step
            assert {step for step, worker in by_step.items() if worker == f"{cpu}@{host}"} == set(by_step) - GPU_STEPS
            assert CPU_STEPS < set(by_step)
            # The run process only orchestrates: every step started in a worker's process.
            run_pid = next(iter(instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_START))).dagster_event.pid
            step_pids = {
                e.step_key: e.dagster_event.pid
                for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
            }
            assert set(step_pids) == set(by_step)
            assert run_pid not in step_pids.values()
            assert "execute_plan" in workers.log(gpu) and "execute_plan" in workers.log(cpu)
    finally:
        workers.stop()
        server.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.mark.slow
def test_rabbitmq_broker_runs_steps_on_a_worker(tmp_path, database, monkeypatch):
    """The same executor over RabbitMQ (rpc:// results): the two shards' captions step, which
    needs no model, on a worker listening on a queue unique to this test."""
    _require(
        "RabbitMQ on 127.0.0.1:5672", lambda: Connection(AMQP_URL, connect_timeout=5).ensure_connection(max_retries=1)
    )
    tag = uuid.uuid4().hex[:8]
    env = _cluster_env(tmp_path, database, AMQP_URL, "rpc://", tag, "http://127.0.0.1:9/v1")  # no model step runs
    workers = Workers(env, tmp_path)
    cpu = f"cpu-{tag}"
    try:
        _create_schema(env, tmp_path)
        workers.start(cpu, env["LPT_CELERY_QUEUE"])
        out = _run([BIN / "lpt", "register", f"sample?limit=2&shard_size=1&name=r{tag}"], env, tmp_path)
        keys = [f"r{tag}-train-00000", f"r{tag}-train-00001"]
        assert all(f"{key}  (new)" in out for key in keys), out
        workers.wait_ready(AMQP_URL)
        _run(
            [
                BIN / "dagster",
                "asset",
                "materialize",
                "-m",
                "lpt_assets.definitions",
                "--select",
                "captions",
                "--partition-range",
                f"{keys[0]}...{keys[1]}",
            ],
            env,
            tmp_path,
        )
        with _instance(env, monkeypatch) as instance:
            [run] = instance.get_runs()
            assert run.status == DagsterRunStatus.SUCCESS
            assert instance.get_materialized_partitions(AssetKey("captions")) == set(keys)
            assert _step_workers(instance, run.run_id) == {"captions": f"{cpu}@{socket.gethostname()}"}
    finally:
        workers.stop()
        with Connection(AMQP_URL) as conn:  # the worker's durable queue would outlive the test
            conn.default_channel.queue_delete(env["LPT_CELERY_QUEUE"])
