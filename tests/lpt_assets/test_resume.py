"""`kill -9` in the middle of stage 2, then a rerun: it completes, nothing is duplicated, and only
the batch that was in flight is sent again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.small_config import SMALL_TOML

BIN = Path(sys.executable).parent
CHECKPOINT = 2

CONFIG = SMALL_TOML + f"""
[engines.ask]
checkpoint_every = {CHECKPOINT}
[engines.vlm]
checkpoint_every = {CHECKPOINT}
[engines.reasoner]
checkpoint_every = {CHECKPOINT}
"""

pytestmark = pytest.mark.slow


def _cache_files(data: Path) -> list[Path]:
    return sorted(data.glob("response_cache/*/batch-*.jsonl"), key=lambda p: p.stat().st_mtime_ns)


def _wait(condition, process, timeout=600.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def test_kill_during_stage2_then_rerun(tmp_path):
    (tmp_path / "lpt.toml").write_text(CONFIG)
    (tmp_path / "home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    command = [
        str(BIN / "lpt"), "demo", "--json", "--config", str(tmp_path / "lpt.toml"),
        "--source", "sample?limit=4&shard_size=2",
    ]
    data = tmp_path / "data"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait(lambda: (data / "mcqs" / "sample-train-00001.parquet").exists(), process)
        stage1_files = set(_cache_files(data))
        _wait(lambda: len(set(_cache_files(data)) - stage1_files) >= 1, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not (data / "simple_cots").exists(), "stage 2 finished before the kill"
    stage2_files = [p for p in _cache_files(data) if p not in stage1_files]
    cached_at_kill = sum(len(p.read_text().splitlines()) for p in stage2_files)
    assert all(len(p.read_text().splitlines()) <= CHECKPOINT for p in stage2_files)

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    stage2 = summary["engines"]["simple_cots"]
    mcqs = pl.concat([pl.read_parquet(p) for p in sorted((data / "mcqs").glob("*.parquet"))])
    cots = pl.concat([pl.read_parquet(p) for p in sorted((data / "simple_cots").glob("*.parquet"))])
    # everything persisted before the kill came back from the cache; only the rest was sent
    assert stage2["cache_hits"] == cached_at_kill >= 1
    assert stage2["requests_sent"] == mcqs.height - cached_at_kill
    assert cots.height == mcqs.height * 2
    assert cots["cot_id"].n_unique() == cots.height
    assert summary["rows"]["dpo_pairs"] >= 0 and summary["rows"]["long_cots"] > 0
