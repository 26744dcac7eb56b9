"""The real commands a user types: `lpt register`, then Dagster's own CLI for one shard.

Dagster 1.13's `dagster job execute` takes the code location by module (`-m`) and the
partition as the `dagster/partition` tag; it has no `-w` or `--partition` options.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

CONFIG = """
storage = "data"
exports = "exports"
[ask]
questions_per_image = 2
sampling = { n = 1, temperature = 0.7, top_p = 0.95, max_tokens = 240 }
[think]
caption_stand_in = true
constrain_format = true
sampling = { n = 2, temperature = 0.8, top_p = 0.9, max_tokens = 48 }
[think_harder]
constrain_format = true
retry_max_tokens = 64
sampling = { n = 1, temperature = 0.7, top_p = 0.8, top_k = 50, max_tokens = 48 }
"""


def _run(args, env, cwd):
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_register_then_dagster_job_execute_one_shard(tmp_path):
    (tmp_path / "lpt.toml").write_text(CONFIG)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LPT_CONFIG": str(tmp_path / "lpt.toml")}
    out = _run([BIN / "lpt", "register", "sample?limit=1&shard_size=1&name=one"], env, REPO)
    assert "one-train-00000  (new)" in out
    again = _run([BIN / "lpt", "register", "sample?limit=1&shard_size=1&name=one"], env, REPO)
    assert "0 new" in again
    _run(
        [BIN / "dagster", "job", "execute", "-m", "lpt_assets.definitions", "-j", "lpt_pipeline",
         "--tags", json.dumps({"dagster/partition": "one-train-00000"})],
        env,
        REPO,
    )
    for asset in ["captions", "mcqs", "simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]:
        assert (tmp_path / "data" / asset / "one-train-00000.parquet").exists(), asset
    _run([BIN / "dagster", "job", "execute", "-m", "lpt_assets.definitions", "-j", "lpt_exports"], env, REPO)
    info = json.loads((tmp_path / "exports" / "llamafactory" / "dataset_info.json").read_text())
    assert any(entry.get("ranking") for entry in info.values())
