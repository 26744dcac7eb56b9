"""A source registered with a mistake can be undone: `lpt unregister` (or `register --replace`)
removes its shards from the instance with their history, every stage's tables, their response
cache and their export parts, so the corrected spec registers cleanly. Through the real `lpt`
command, with the pipeline run by `lpt job execute` against a real HTTP model server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef

from tests.pipeline_model_server import PipelineModelServer

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WRONG, RIGHT = "sample?limit=4&shard_size=2&name=u", "sample?limit=4&shard_size=4&name=u"
OLD = ["u-train-00000", "u-train-00001"]

pytestmark = pytest.mark.slow


def _config(server: PipelineModelServer) -> str:
    engine = f'kind = "openai"\nmodel = "fake"\nbase_url = "{server.base_url}"\nbackoff_initial_s = 0.01\n'
    return (
        'storage = "data"\nexports = "exports"\n[ask]\nquestions_per_image = 2\n'
        "[think]\ncaption_stand_in = true\nsampling = { n = 2, max_tokens = 64 }\n"
        "[think_harder]\nsampling = { n = 1, max_tokens = 64 }\n"
        + "".join(f"[engines.{role}]\n{engine}" for role in ("ask", "vlm", "reasoner"))
    )


def _leftovers(root: Path, keys: list[str]) -> list[str]:
    """Every file or folder under `root` named after one of `keys`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.split(".")[0] in keys)


def test_unregister_then_a_corrected_register_leaves_no_orphans(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").touch()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LPT_CONFIG": str(tmp_path / "lpt.toml")}
    env.pop("LPT_DEBUG", None)

    def lpt(*args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [BIN / "lpt", *args], cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=900
        )
        assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    with PipelineModelServer() as server:
        (tmp_path / "lpt.toml").write_text(_config(server))
        assert "u-train-00001  (new)" in lpt("register", WRONG).stdout
        ran = lpt(
            "job",
            "execute",
            "-w",
            str(REPO / "workspace.yaml"),
            "-j",
            "lpt_pipeline",
            "--partition-range",
            f"{OLD[0]}...{OLD[1]}",
        )
        assert " - DEBUG - " not in ran.stdout + ran.stderr  # events at INFO unless asked
        assert f"shards: {OLD[0]}, {OLD[1]}" in ran.stdout and "rows per stage:" in ran.stdout  # `lpt demo`'s summary
        lpt("job", "execute", "-w", str(REPO / "workspace.yaml"), "-j", "lpt_exports")
    data, exports = tmp_path / "data", tmp_path / "exports"
    assert len(_leftovers(data, OLD)) > 10 and _leftovers(data / "response_cache", OLD) and _leftovers(exports, OLD)

    refused = lpt("register", RIGHT, ok=False)
    assert refused.returncode == 2 and "u-train-00000 is already registered with different contents" in refused.stderr
    assert "--replace" in refused.stderr and len(refused.stderr.strip().splitlines()) <= 3

    kept = lpt("unregister", WRONG, stdin="n\n", ok=False)
    assert "Remove 2 shard(s) (u-train-00000, u-train-00001) and all their data?" in kept.stdout
    assert len(_leftovers(data, OLD)) > 10

    removed = lpt("unregister", WRONG, stdin="y\n")
    assert "removed 2 shard(s):" in removed.stdout
    assert _leftovers(data, OLD) == []
    # the export keeps only its own bookkeeping of the dropped shards, counting nothing
    assert _leftovers(exports, OLD) == [f".lpt/shards/{key}.json" for key in OLD]
    assert all(json.loads((exports / ".lpt" / "shards" / f"{key}.json").read_text())["stats"] is None for key in OLD)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert instance.get_dynamic_partitions("shards") == []
        for asset in instance.get_asset_keys():
            assert not set(instance.get_materialized_partitions(asset)) & set(OLD), asset

    registered = lpt("register", RIGHT).stdout
    assert "u: 4 items in 1 shards, 1 new" in registered
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.parquet")) == [
        "shard_manifest/u-train-00000.parquet"
    ]
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert instance.get_dynamic_partitions("shards") == ["u-train-00000"]
        assert instance.get_materialized_partitions(AssetKey("captions")) == set()  # no status left from the old shard

    # `register --replace` does both in one step
    replaced = lpt("register", "--replace", "--yes", "sample?limit=3&shard_size=3&name=u")
    assert "removed 1 shard(s)" in replaced.stdout and "u: 3 items in 1 shards, 1 new" in replaced.stdout
