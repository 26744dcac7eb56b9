from lpt_resources.cache import ResponseCache
from lpt_resources.engines.base import ChatMessage, Completion, GenerationRequest, GenerationResult, SamplingParams

IDENTITY = {"kind": "transformers", "model": "m", "dtype": "float32"}


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
    assert first.put([a, b], [_result(a, "A"), _result(b, "B")]) == 2
    reopened = ResponseCache(str(tmp_path), IDENTITY)
    hit = reopened.get(_request("a", request_id="other", seed=1))
    assert hit is not None and hit.completions[0].text == "A" and hit.request_id == "other"


def test_any_change_to_the_request_or_engine_is_a_miss(tmp_path):
    cache = ResponseCache(str(tmp_path), IDENTITY)
    a = _request("a", seed=1)
    cache.put([a], [_result(a, "A")])
    assert cache.get(_request("a", seed=2)) is None
    assert cache.get(_request("a", seed=1, temperature=0.1)) is None
    assert ResponseCache(str(tmp_path), {**IDENTITY, "model": "other"}).get(a) is None


def test_errors_are_not_cached_and_batches_are_separate_files(tmp_path):
    cache = ResponseCache(str(tmp_path), IDENTITY)
    a, b = _request("a"), _request("b")
    assert cache.put([a, b], [_result(a, "A"), _result(b, "", error="boom")]) == 1
    c = _request("c")
    cache.put([c], [_result(c, "C")])
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and all(name.startswith("batch-") for name in files)
    reopened = ResponseCache(str(tmp_path), IDENTITY)
    assert reopened.get(b) is None and reopened.get(c) is not None
