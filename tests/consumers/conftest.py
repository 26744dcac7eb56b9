"""The consumer suites run in their own environments (`make test-consumers`: .venv-llamafactory
and .venv-trl), where lpt is not installed: the export they load is made by lpt's environment
(`build_export.py`, the real pipeline and export job), and the tiny models are built here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LPT_PYTHON = Path(os.environ.get("LPT_PYTHON", REPO / ".venv" / "bin" / "python"))


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> dict:
    """What `build_export` wrote: the export root and the ids and counts of its rows."""
    out = tmp_path_factory.mktemp("export")
    if not LPT_PYTHON.exists():
        raise RuntimeError(f"lpt's environment is needed to make the export: {LPT_PYTHON} (make install)")
    done = subprocess.run(
        [str(LPT_PYTHON), "-m", "tests.consumers.build_export", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    from tests.tiny_models import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-vl") / "model")


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    from tests.tiny_models import tiny_qwen2

    return tiny_qwen2(tmp_path_factory.mktemp("tiny-text") / "model")


def run_python(args: list[str], pythonpath: list[Path], timeout: int = 900) -> subprocess.CompletedProcess:
    """This environment's python in a fresh process (a training run keeps global state)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [REPO, *pythonpath])}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
