"""`kill -9` in the middle of a streamed stage 2, then a rerun: it completes, nothing is lost or
duplicated, and what is sent again is at most what was in flight (the requests under way plus
the answers not yet flushed to the cache)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.pipeline_model_server import PipelineModelServer

BIN = Path(sys.executable).parent
FLUSH_EVERY = 2
CONCURRENCY = 2
QUEUE_DEPTH = 2 * CONCURRENCY  # the OpenAI engine's window: twice its HTTP concurrency
SOURCE = "sample?limit=8&shard_size=4"

pytestmark = pytest.mark.slow


def _config(base_url: str) -> str:
    engines = "".join(
        f'[engines.{role}]\nkind = "openai"\nmodel = "fake-{role}"\nbase_url = "{base_url}"\n'
        f"flush_every = {FLUSH_EVERY}\nflush_seconds = 600\nmax_concurrency = {CONCURRENCY}\n"
        for role in ("ask", "vlm", "reasoner")
    )
    return f"""
storage = "data"
exports = "exports"
[ask]
questions_per_image = 2
[think]
caption_stand_in = true
sampling = {{ n = 2, max_tokens = 64 }}
[think_harder]
sampling = {{ n = 1, max_tokens = 64 }}
{engines}"""


def _cached(data: Path, stage: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in data.glob(f"response_cache/*/{stage}/*/part-*.jsonl"))


def _wait(condition, process, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def _vlm_requests(server: PipelineModelServer) -> int:
    return sum(1 for body in server.requests if body.get("model") == "fake-vlm")


def test_kill_during_streamed_stage2_then_rerun(tmp_path):
    with PipelineModelServer(delay_s=0.05) as server:
        (tmp_path / "lpt.toml").write_text(_config(server.base_url))
        (tmp_path / "home").mkdir()
        env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
        command = [str(BIN / "lpt"), "demo", "--json", "--config", str(tmp_path / "lpt.toml"), "--source", SOURCE]
        data = tmp_path / "data"
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            _wait(lambda: _cached(data, "simple_cots") >= 2 * FLUSH_EVERY, process)
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.wait()
        assert not (data / "simple_cots").exists(), "stage 2 finished before the kill"
        cached_at_kill = _cached(data, "simple_cots")
        sent_before_kill = _vlm_requests(server)

        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert " - DEBUG - " not in done.stdout + done.stderr  # Dagster's events from INFO up
        assert " - INFO - " in done.stdout + done.stderr
        summary = json.loads(done.stdout[done.stdout.index("{") :])
        stage2 = summary["engines"]["simple_cots"]
        mcqs = pl.concat([pl.read_parquet(p) for p in sorted((data / "mcqs").glob("*.parquet"))])
        cots = pl.concat([pl.read_parquet(p) for p in sorted((data / "simple_cots").glob("*.parquet"))])
        # everything persisted before the kill came back from the cache; only the rest was sent
        assert stage2["cache_hits"] == cached_at_kill
        assert stage2["requests_sent"] == mcqs.height - cached_at_kill
        # what the kill cost: requests the server had taken that never reached the cache
        lost = sent_before_kill - cached_at_kill
        assert 0 <= lost <= QUEUE_DEPTH + FLUSH_EVERY - 1, (sent_before_kill, cached_at_kill)
        assert cots.height == mcqs.height * 2
        assert cots["cot_id"].n_unique() == cots.height
        assert summary["rows"]["long_cots"] > 0

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        rerun = json.loads(again.stdout[again.stdout.index("{") :])
        assert all(stats["requests_sent"] == 0 for stats in rerun["engines"].values()), rerun["engines"]
