"""Engine preflight: each wrong setting fails in seconds, naming the role, setting and value."""

import socket
import time

import pytest

from lpt.config import Engines, EngineSettingsBase, engine_settings
from lpt_resources.engines.preflight import EngineCheckError, check_engine, check_engines
from tests.fake_openai_server import FakeOpenAIServer


def _dead_port() -> int:
    """A port where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fails(role: str, settings: EngineSettingsBase) -> EngineCheckError:
    started = time.perf_counter()
    with pytest.raises(EngineCheckError) as raised:
        check_engine(role, settings)
    assert time.perf_counter() - started < 5
    return raised.value


def test_a_server_where_nothing_listens_fails_in_seconds_naming_role_and_url():
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    error = _fails("reasoner", engine_settings(kind="openai", model="fake", base_url=url))
    assert str(error).startswith(
        f"engines.reasoner.base_url = '{url}': no OpenAI-compatible server answers GET {url}/models"
    )
    assert (error.role, error.setting, error.value) == ("reasoner", "base_url", url)


def test_a_server_that_hangs_fails_within_the_timeout():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        error = _fails("vlm", engine_settings(kind="openai", model="fake", base_url=url))
    assert "engines.vlm.base_url" in str(error) and "within 3 s" in str(error)


def test_a_server_that_does_not_serve_the_model_says_what_it_serves():
    with FakeOpenAIServer(served_models=("Qwen/Qwen2.5-VL-7B-Instruct",)) as server:
        assert check_engine(
            "vlm", engine_settings(kind="openai", model="Qwen/Qwen2.5-VL-7B-Instruct", base_url=server.base_url)
        )
        url = server.base_url
        error = _fails("vlm", engine_settings(kind="openai", model="qwen2.5-vl", base_url=url))
    assert str(error) == f"engines.vlm.model = 'qwen2.5-vl': the server at {url} serves Qwen/Qwen2.5-VL-7B-Instruct"


def test_a_missing_local_model_path_fails_at_once(tmp_path):
    missing = str(tmp_path / "models" / "qwen")
    error = _fails("vlm", engine_settings(model=missing))
    assert str(error).startswith(f"engines.vlm.model = '{missing}': no such local model folder")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in str(_fails("ask", engine_settings(kind="vllm", model=str(tmp_path / "empty"))))
    assert "engines.ask.gguf_file = 'm.gguf': no such file" in str(
        _fails("ask", engine_settings(model=str(tmp_path / "empty"), gguf_file="m.gguf"))
    )


def test_hub_ids_must_be_well_formed_and_cached_when_offline(monkeypatch, tmp_path):
    for bad in ("Qwen2.5-7B", "org/na me", "-org/name", "org/name--x"):
        assert "neither an existing local folder nor a Hugging Face hub id" in str(
            _fails("ask", engine_settings(model=bad))
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = _fails("reasoner", engine_settings(kind="vllm", model="someone/not-downloaded-7b"))
    assert "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in str(error)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert check_engine("reasoner", engine_settings(kind="vllm", model="someone/not-downloaded-7b")).endswith(
        "hub model someone/not-downloaded-7b"
    )
    (tmp_path / "config.json").write_text("{}")  # what the check looks for; loading is the engine's business
    assert "local model" in check_engine("vlm", engine_settings(model=str(tmp_path)))


def test_all_roles_are_checked_and_the_bundled_model_passes():
    lines = check_engines(Engines())
    assert [line.split(":")[0] for line in lines] == ["ask", "vlm", "reasoner"]
    with pytest.raises(EngineCheckError, match="engines.vlm.model"):
        check_engines(Engines(vlm=engine_settings(model="/no/such/model")), ["ask", "vlm"])
