"""The real commands a user types: `lpt register`, then Dagster's own CLI for one shard.

Dagster 1.13's `dagster job execute` takes the code location by module (`-m`) and the
partition as the `dagster/partition` tag; it has no `-w` or `--partition` options, which
`lpt job execute` adds.
"""

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import typer
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from tests.small_config import SMALL_TOML

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _run(args, env, cwd):
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_register_then_dagster_job_execute_one_shard(tmp_path):
    (tmp_path / "lpt.toml").write_text(SMALL_TOML)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LPT_CONFIG": str(tmp_path / "lpt.toml")}
    out = _run([BIN / "lpt", "register", "sample?limit=1&shard_size=1&name=one"], env, REPO)
    assert "one-train-00000  (new)" in out
    again = _run([BIN / "lpt", "register", "sample?limit=1&shard_size=1&name=one"], env, REPO)
    assert "0 new" in again
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
            json.dumps({"dagster/partition": "one-train-00000"}),
        ],
        env,
        REPO,
    )
    for asset in ["captions", "mcqs", "simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]:
        assert (tmp_path / "data" / asset / "one-train-00000.parquet").exists(), asset
    _run([BIN / "dagster", "job", "execute", "-m", "lpt_assets.definitions", "-j", "lpt_exports"], env, REPO)
    info = json.loads((tmp_path / "exports" / "llamafactory" / "dataset_info.json").read_text())
    # One image on SmolLM2-135M may yield no correct trace, hence no SFT row or pair: the
    # export names exactly the datasets the shard has rows for.
    tables = {
        name: pl.read_parquet(tmp_path / "data" / name / "one-train-00000.parquet").height
        for name in ("sft_samples", "dpo_pairs")
    }
    assert any(entry.get("ranking") for entry in info.values()) == (tables["dpo_pairs"] > 0), (info, tables)
    assert any(not entry.get("ranking") for entry in info.values()) == (tables["sft_samples"] > 0), (info, tables)


def test_stage_jobs_by_workspace_file_and_partition(tmp_path):
    """`lpt job execute -w workspace.yaml -j STAGE --partition KEY` (and `--partition-range`),
    next to Dagster's own `dagster job execute -m … --tags` for a stage job."""
    (tmp_path / "lpt.toml").write_text(SMALL_TOML)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LPT_CONFIG": str(tmp_path / "lpt.toml")}
    workspace = str(REPO / "workspace.yaml")
    _run([BIN / "lpt", "register", "sample?limit=2&shard_size=1&name=two"], env, tmp_path)
    first, second = "two-train-00000", "two-train-00001"
    data = tmp_path / "data"

    _run(
        [
            BIN / "dagster",
            "job",
            "execute",
            "-m",
            "lpt_assets.definitions",
            "-j",
            "ingest",
            "--tags",
            json.dumps({"dagster/partition": first}),
        ],
        env,
        tmp_path,
    )
    assert (data / "captions" / f"{first}.parquet").exists()
    assert not (data / "captions" / f"{second}.parquet").exists()

    _run(
        [BIN / "lpt", "job", "execute", "-w", workspace, "-j", "ingest", "--partition-range", f"{first}...{second}"],
        env,
        tmp_path,
    )
    assert (data / "captions" / f"{second}.parquet").exists()

    # --config reaches the child `dagster job execute` as its $LPT_CONFIG: this process has none
    without_config = {k: v for k, v in env.items() if k != "LPT_CONFIG"}
    out = _run(
        [
            BIN / "lpt",
            "job",
            "execute",
            "-w",
            workspace,
            "-j",
            "ask",
            "--partition",
            second,
            "--config",
            str(tmp_path / "lpt.toml"),
        ],
        without_config,
        tmp_path,
    )
    assert "succeeded" in out
    assert (data / "mcqs" / f"{second}.parquet").exists() and not (data / "mcqs" / f"{first}.parquet").exists()
    assert not (data / "simple_cots").exists()  # a stage job runs its stage only

    # three successful runs on the instance, tagged as Dagster's own CLI tags them
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = list(reversed(instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))))
    assert [r.job_name for r in runs] == ["ingest", "ingest", "ask"]
    assert runs[0].tags["dagster/partition"] == first
    assert (runs[1].tags["dagster/asset_partition_range_start"], runs[1].tags["dagster/asset_partition_range_end"]) == (
        first,
        second,
    )
    assert runs[2].tags["dagster/partition"] == second

    # an unknown shard is an error with a non-zero exit, not a silent no-op
    failed = subprocess.run(
        [BIN / "lpt", "job", "execute", "-w", workspace, "-j", "ask", "--partition", "no-such-shard"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode != 0
    assert "no-such-shard" in failed.stdout + failed.stderr


def test_workspace_file_names_the_code_location(tmp_path):
    from lpt_assets.cli import workspace_pointer

    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module: {module_name: lpt_assets.definitions, location_name: lpt}\n"
        "  - python_file: {relative_path: code/defs.py, location_name: other, attribute: defs}\n"
    )
    lpt = workspace_pointer(tmp_path / "workspace.yaml", "lpt")
    assert (lpt.module_name, lpt.python_file, lpt.working_directory) == ("lpt_assets.definitions", None, str(tmp_path))
    other = workspace_pointer(tmp_path / "workspace.yaml", "other")
    assert (other.python_file, other.attribute) == (str(tmp_path / "code" / "defs.py"), "defs")
    # as `dagster job execute` takes them
    assert lpt.cli_args() == ["-m", "lpt_assets.definitions", "-d", str(tmp_path)]
    assert other.cli_args() == ["-f", str(tmp_path / "code" / "defs.py"), "-d", str(tmp_path), "-a", "defs"]
    with pytest.raises(typer.BadParameter, match="lpt, other"):
        workspace_pointer(tmp_path / "workspace.yaml")
    assert workspace_pointer(REPO / "workspace.yaml").module_name == "lpt_assets.definitions"


def _open_instance_at_barrier(home: str, barrier, outcomes) -> None:
    os.environ["DAGSTER_HOME"] = home
    from lpt_assets.cli import _instance

    barrier.wait()
    try:
        with _instance() as instance:
            instance.get_runs(limit=1)
        outcomes.put("ok")
    except Exception as error:  # reported to the test, which names it
        outcomes.put(f"{type(error).__name__}: {error}"[:300])


def test_commands_started_together_share_a_fresh_sqlite_home(tmp_path):
    """Four processes open a fresh sqlite home at the same instant, as two `lpt demo` runs started
    together do. Unserialized, Dagster's schema creation collides in nearly every try here."""
    context = multiprocessing.get_context("spawn")
    barrier, outcomes = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_open_instance_at_barrier, args=(str(tmp_path), barrier, outcomes)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [outcomes.get(timeout=5) for _ in workers] == ["ok"] * 4
