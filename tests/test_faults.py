"""Representative scenarios of the fault matrix (`make faults` runs them all), through the same
code: a kill -9 mid-request, an engine that fails persistently then recovers, two runs of the
same shards at once, and a full disk. Plus focused regression tests for what the matrix found."""

import os
import subprocess

import pytest

from faults import matrix
from lpt.config import Sampling
from lpt.prompts import ChatPrompt
from lpt_assets.generation import EngineRequestsFailed, generate, to_request
from lpt_resources.cache import ResponseCache
from lpt_resources.engines.base import ChatMessage, Completion, GenerationRequest, GenerationResult, SamplingParams
from lpt_resources.engines.resource import OpenAIEngineResource
from tests.fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return matrix.baseline_snapshot(tmp_path_factory.mktemp("baseline"))[0]


def _scenario(name: str) -> matrix.Scenario:
    return next(s for s in matrix.scenarios(seed=5) if s.name == name)


@pytest.mark.parametrize(
    "name",
    [
        "kill -9 in simple_cots (request 5 in flight)",
        "reasoner fails persistently (500), then recovers",
        "two runs of the same shards at once",
        "storage full (tmpfs) in stage 2",  # mounts a real tmpfs: needs root, as CI runs
    ],
)
def test_scenario_reruns_to_the_undisturbed_result(name, baseline, tmp_path):
    result = matrix.run_scenario(_scenario(name), baseline, tmp_path)
    assert (result.lost, result.duplicated, result.crashes) == (0, 0, 0), result.notes
    assert result.runs >= 2


def test_matrix_has_every_fault_kind():
    chosen = matrix.scenarios(seed=5)
    kinds = [s.kind for s in chosen]
    assert len(chosen) >= 20 and kinds.count("kill") >= 10
    assert {"engine", "concurrent", "storage"} <= set(kinds)


def test_comparison_counts_lost_and_duplicated_rows():
    base = {"t": matrix.Counter({"a": 1, "b": 1}), "gone": matrix.Counter({"c": 1})}
    after = {"t": matrix.Counter({"a": 2, "x": 1})}
    assert matrix.compare(base, after) == (2, 2)  # b and c lost; a repeated and x unknown


# ---- regressions found by the matrix


def _request(text: str) -> GenerationRequest:
    return GenerationRequest(
        request_id=text, messages=(ChatMessage(role="user", content=text),), sampling=SamplingParams(seed=1)
    )


@pytest.fixture
def tiny_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    matrix.mount_tmpfs(folder, "64k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_leaves_no_partial_cache_batch_and_caches_nothing(tiny_disk):
    cache = ResponseCache(str(tiny_disk), {"kind": "openai", "model": "m"})
    requests = [_request(f"q{i}") for i in range(3)]
    big = [
        GenerationResult(
            request_id=r.request_id,
            prompt_tokens=1,
            completions=[Completion(text="x" * 40_000, finish_reason="stop", completion_tokens=1)],
        )
        for r in requests
    ]
    with pytest.raises(OSError, match="No space left"):
        cache.put("stage/shard", list(zip(requests, big)))
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]
    assert cache.get(requests[0], "stage/shard") is None  # what never reached the disk is not a hit


def test_a_full_disk_leaves_no_partial_table(tiny_disk):
    import polars as pl

    from lpt_resources.storage import ParquetStore

    store = ParquetStore(base=str(tiny_disk))
    store.write_frame("t", "p", pl.DataFrame({"x": ["small"]}))
    noise = pl.DataFrame({"x": [os.urandom(100_000).hex()]})
    with pytest.raises(OSError, match="No space left"):
        store.write_frame("t", "p", noise)
    assert sorted(p.name for p in (tiny_disk / "t").iterdir()) == ["p.parquet"]
    assert store.read_frame("t", "p")["x"].to_list() == ["small"]


def test_failed_requests_fail_the_stage_after_caching_the_rest(tmp_path):
    """A stage must not write tables without the rows of requests that failed; the rerun then
    sends only those."""
    failing = {"always"}

    def rule(body):
        return 503 if any(m["content"] in failing for m in body["messages"]) else None

    with FakeOpenAIServer(rule=rule) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, flush_every=1, max_retries=0)
        prompts = [ChatPrompt(key=k, system="", user=k) for k in ("one", "always", "two")]
        requests = [to_request(p, Sampling(n=1, max_tokens=8)) for p in prompts]
        with pytest.raises(EngineRequestsFailed, match="1 of 3 requests failed"):
            generate(engine, requests, cache_base=str(tmp_path))
        sent = len(server.requests)
        failing.clear()
        results, stats = generate(engine, requests, cache_base=str(tmp_path))
    assert (stats.cache_hits, stats.requests_sent, len(server.requests) - sent) == (2, 1, 1)
    assert [r.error for r in results] == [None, None, None]


def test_a_request_the_server_refuses_is_returned_for_quarantine_not_raised(tmp_path):
    """A 400 (too long for the context, say) is the request's own fault: failing the stage for
    it would fail every rerun the same way. It comes back refused, for the stage to quarantine,
    and is not cached, so a fixed deployment gets to answer it."""

    def rule(body):
        return 400 if any(m["content"] == "too long" for m in body["messages"]) else None

    with FakeOpenAIServer(rule=rule) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, flush_every=1, max_retries=3)
        prompts = [ChatPrompt(key=k, system="", user=k) for k in ("one", "too long", "two")]
        requests = [to_request(p, Sampling(n=1, max_tokens=8)) for p in prompts]
        results, stats = generate(engine, requests, cache_base=str(tmp_path))
        assert len(server.requests) == 3  # a refusal is not retried
        assert [r.refused for r in results] == [False, True, False]
        assert results[1].error_kind == "request" and "400" in results[1].error
        again, stats = generate(engine, requests, cache_base=str(tmp_path))
    assert (stats.cache_hits, stats.requests_sent) == (2, 1)
    assert [r.refused for r in again] == [False, True, False]
