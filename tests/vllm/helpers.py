"""What the in-process vLLM engine's tests and the `vllm serve` tests share: their requests,
and the scoring check both engines must pass against the transformers forward pass."""

import pytest

from lpt_resources.engines.base import ChatMessage, Engine, GenerationRequest, SamplingParams

SYSTEM = ChatMessage(role="system", content="You are a helpful assistant.")


def request(rid: str, text: str, **kw) -> GenerationRequest:
    sampling = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.model_fields}
    return GenerationRequest(
        request_id=rid,
        messages=(SYSTEM, ChatMessage(role="user", content=text)),
        sampling=SamplingParams(**sampling),
        **kw,
    )


def assert_scores_match_transformers(engine: Engine, hf_engine: Engine) -> None:
    """Teacher-forced log-probabilities of targets after the prompt (and after a pre-fill)
    agree with the transformers engine's token for token, scoring and generation requests
    sharing one stream; an empty target is the request's own refusal."""
    targets = ["(A) red", " The answer is (B) blue.", "C", "_functions_functions"]
    reqs = [request(f"s{i}", "Which colour is the apple?", target=t) for i, t in enumerate(targets)]
    reqs.append(request("sp", "Which colour?", prefill="<think>\nRed.</think>\n<answer>", target="(A)</answer>"))
    mixed = [*reqs[:2], request("g", "Hi", temperature=0, max_tokens=3), *reqs[2:]]
    ours = [r for r in engine.generate(mixed) if r.request_id != "g"]
    theirs = hf_engine.generate(reqs)
    for a, b in zip(ours, theirs):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.completions == b.completions == []
        assert a.prompt_tokens == b.prompt_tokens
        assert len(a.target_logprobs) == len(b.target_logprobs) > 0
        assert a.target_logprobs == pytest.approx(b.target_logprobs, abs=2e-3)
    [empty] = engine.generate([request("e", "Hi", target="")])
    assert empty.refused
