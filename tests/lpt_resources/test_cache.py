import json

from lpt_resources.cache import ResponseCache
from lpt_resources.engines.base import ChatMessage, Completion, GenerationRequest, GenerationResult, SamplingParams

IDENTITY = {"kind": "transformers", "model": "m", "dtype": "float32"}
PART = "simple_cots/shard-00000"


def _request(text: str, request_id: str = "r", **sampling) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(ChatMessage(role="user", content=text),),
        sampling=SamplingParams(**sampling),
    )


def _result(request: GenerationRequest, text: str, error: str | None = None) -> GenerationResult:
    completions = [] if error else [Completion(text=text, finish_reason="stop", completion_tokens=3)]
    return GenerationResult(request_id=request.request_id, prompt_tokens=5, completions=completions, error=error)


def test_hits_survive_a_new_process_and_ignore_request_ids(tmp_path):
    first = ResponseCache(str(tmp_path), IDENTITY)
    a, b = _request("a", seed=1), _request("b", seed=1)
    assert first.put(PART, [(a, _result(a, "A")), (b, _result(b, "B"))]) == 2
    reopened = ResponseCache(str(tmp_path), IDENTITY)
    hit = reopened.get(_request("a", request_id="other", seed=1), PART)
    assert hit is not None and hit.completions[0].text == "A" and hit.request_id == "other"


def test_any_change_to_the_request_engine_or_partition_is_a_miss(tmp_path):
    cache = ResponseCache(str(tmp_path), IDENTITY)
    a = _request("a", seed=1)
    cache.put(PART, [(a, _result(a, "A"))])
    assert cache.get(_request("a", seed=2), PART) is None
    assert cache.get(_request("a", seed=1, temperature=0.1), PART) is None
    assert cache.get(a, "simple_cots/shard-00001") is None
    assert ResponseCache(str(tmp_path), {**IDENTITY, "model": "other"}).get(a, PART) is None


def test_errors_are_not_cached_and_groups_are_separate_parts_until_compacted(tmp_path):
    cache = ResponseCache(str(tmp_path), IDENTITY)
    a, b, c = _request("a"), _request("b"), _request("c")
    assert cache.put(PART, [(a, _result(a, "A")), (b, _result(b, "", error="boom"))]) == 1
    cache.put(PART, [(c, _result(c, "C"))])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and all(p.name.startswith("part-") and p.parent.name == "shard-00000" for p in files)
    reopened = ResponseCache(str(tmp_path), IDENTITY)
    assert reopened.get(b, PART) is None and reopened.get(c, PART) is not None
    reopened.compact(PART)
    (merged,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(json.loads(line)["result"]["completions"][0]["text"] for line in merged.read_text().splitlines()) == [
        "A",
        "C",
    ]
    assert ResponseCache(str(tmp_path), IDENTITY).get(a, PART).completions[0].text == "A"


def test_a_lookup_reads_only_its_own_partition(tmp_path):
    """Other shards' entries are never read: a rerun's cost follows its own shard."""
    cache = ResponseCache(str(tmp_path), IDENTITY)
    for shard in range(3):
        requests = [_request(f"s{shard}-{i}") for i in range(4)]
        cache.put(f"mcqs/s{shard}", [(r, _result(r, "x")) for r in requests])
    for other in ("mcqs/s1", "mcqs/s2"):  # unreadable: reading them would fail the lookup
        for part in (tmp_path / "response_cache").glob(f"*/{other}/part-*.jsonl"):
            part.write_text("not json")
    fresh = ResponseCache(str(tmp_path), IDENTITY)
    assert fresh.get(_request("s0-3"), "mcqs/s0") is not None
