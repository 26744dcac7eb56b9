"""What a user sees when they get something wrong, through the real `lpt` command: one or two
lines on stderr naming the option, key, role or path, exit code 2; the traceback only with
`--debug` or LPT_DEBUG=1. And `lpt --help` answers at once."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _lpt(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").touch()
    inherited = {k: v for k, v in os.environ.items() if k not in ("LPT_DEBUG", "LPT_CONFIG")}
    environment = {**inherited, "DAGSTER_HOME": str(home), **(env or {})}
    return subprocess.run(
        [BIN / "lpt", *args], cwd=tmp_path, env=environment, capture_output=True, text=True, input=stdin, timeout=300
    )


def _short_error(done: subprocess.CompletedProcess, *names: str) -> str:
    """A user error: exit 2, at most 3 lines on stderr, naming every one of `names`."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert 1 <= len(lines) <= 3, done.stderr
    for name in names:
        assert name in lines[0], (name, done.stderr)
    return lines[0]


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("sample?shardsize=3", ["'shardsize'", "did you mean 'shard_size'?", "limit, name, seed, shard_size, split"]),
        ("sample?shard_size=0", ["shard_size='0'", "a whole number of images >= 1"]),
        ("sample?shard_size=abc", ["shard_size='abc'", "a whole number of images >= 1"]),
        ("sample?limit=-1", ["limit='-1'", "a whole number of images >= 1"]),
        ("ftp:somewhere", ["'ftp:somewhere'", "sample, docci:PATH, manifest:PATH or hf:NAME"]),
    ],
)
def test_a_bad_source_spec_is_one_line(tmp_path, spec, names):
    _short_error(_lpt("register", spec, tmp_path=tmp_path), *names)
    assert not (tmp_path / "data").exists()  # refused before anything was written


def test_a_manifest_that_is_not_there_is_named(tmp_path):
    missing = str(tmp_path / "incoming" / "batch-07.jsonl")
    _short_error(_lpt("register", f"manifest:{missing}", tmp_path=tmp_path), missing, "does not exist")


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('[engines.vlm]\nkind = "vlllm"\n', ["engines.vlm.kind = 'vlllm'", "did you mean 'vllm'?"]),
        ('[engines.ask]\nmodle = "x"\n', ["unknown key 'engines.ask.modle'", "did you mean 'engines.ask.model'?"]),
        ("[ask\n", ["not valid TOML"]),
    ],
)
@pytest.mark.parametrize("command", [["check"], ["register", "sample"], ["demo"]])
def test_a_config_mistake_names_the_file_and_the_key(tmp_path, toml, names, command):
    (tmp_path / "my.toml").write_text(toml)
    _short_error(_lpt(*command, "--config", "my.toml", tmp_path=tmp_path), "my.toml", *names)


def test_a_config_file_that_is_not_there_is_named(tmp_path):
    _short_error(_lpt("check", "--config", "nope.toml", tmp_path=tmp_path), "nope.toml: no such config file")
    _short_error(
        _lpt("check", tmp_path=tmp_path, env={"LPT_CONFIG": str(tmp_path / "gone.toml")}),
        "gone.toml: no such config file",
    )


def test_a_per_shard_job_without_a_partition_says_what_to_give(tmp_path):
    workspace = str(Path(__file__).resolve().parent.parent / "workspace.yaml")
    done = _lpt("job", "execute", "-w", workspace, "-j", "lpt_pipeline", tmp_path=tmp_path)
    _short_error(done, "job lpt_pipeline runs per shard", "--partition KEY", "--partition-range START...END")
    _short_error(
        _lpt("job", "execute", "-w", "missing.yaml", "-j", "lpt_exports", tmp_path=tmp_path),
        "missing.yaml: no such workspace file",
    )


def test_a_shard_that_is_not_registered_is_named_before_dagster_runs(tmp_path):
    workspace = str(Path(__file__).resolve().parent.parent / "workspace.yaml")
    done = _lpt(
        "job", "execute", "-w", workspace, "-j", "ingest", "--partition-range", "a...no-such-shard", tmp_path=tmp_path
    )
    _short_error(done, "'a'", "no registered shard")
    _short_error(
        _lpt("job", "execute", "-w", workspace, "-j", "lpt_exports", "--partition", "a", tmp_path=tmp_path),
        "job lpt_exports does not run per shard",
    )


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_engine_preflight_fails_in_seconds_naming_role_and_value(tmp_path):
    """The check itself takes under 5 s (tests/lpt_resources/test_preflight.py); here the bound
    covers a whole `lpt` process on a loaded 2-core machine, far from the minute of retries a
    dead server cost before."""
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    missing = str(tmp_path / "models" / "Qwen2.5-VL-7B-Instruct")
    (tmp_path / "dead.toml").write_text(f'[engines.reasoner]\nkind = "openai"\nmodel = "r1"\nbase_url = "{url}"\n')
    (tmp_path / "missing.toml").write_text(f'[engines.vlm]\nmodel = "{missing}"\n')
    for toml, names in (
        ("dead.toml", ["engines.reasoner.base_url", url]),
        ("missing.toml", ["engines.vlm.model", missing]),
    ):
        started = time.perf_counter()
        done = _lpt("check", "--config", toml, tmp_path=tmp_path)
        assert time.perf_counter() - started < 20
        _short_error(done, *names)
    # the same preflight opens `lpt demo` and a stage job, before any model or instance work
    started = time.perf_counter()
    _short_error(_lpt("demo", "--config", "missing.toml", tmp_path=tmp_path), "engines.vlm.model", missing)
    assert time.perf_counter() - started < 20
    assert not (tmp_path / "data").exists()


def test_check_lists_every_role_when_all_is_well(tmp_path):
    done = _lpt("check", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["ok  ask", "ok  vlm", "ok  reasoner"]


def test_debug_shows_the_traceback(tmp_path):
    for done in (
        _lpt("--debug", "register", "sample?shardsize=3", tmp_path=tmp_path),
        _lpt("register", "sample?shardsize=3", tmp_path=tmp_path, env={"LPT_DEBUG": "1"}),
    ):
        assert done.returncode != 0
        assert "Traceback (most recent call last)" in done.stderr and "SpecError" in done.stderr


def test_help_answers_at_once_and_reads_well(tmp_path):
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        done = _lpt("--help", tmp_path=tmp_path)
        timings.append(time.perf_counter() - started)
        assert done.returncode == 0
    assert min(timings) < 2, timings
    assert "<bool>" not in done.stdout
    for command in ("register", "unregister", "check", "demo", "job"):
        line = next(line for line in done.stdout.splitlines() if line.strip().startswith(command + " "))
        assert line.rstrip().endswith("."), line  # a whole sentence, not one cut at a width
    for command in (["register"], ["unregister"], ["check"], ["demo"], ["job", "execute"]):
        assert "--config" in _lpt(*command, "--help", tmp_path=tmp_path).stdout, command
