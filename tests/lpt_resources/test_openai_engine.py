"""OpenAIEngine against a real OpenAI-compatible HTTP server on 127.0.0.1 with fault injection
(`openai` 3.x speaks through httpx2, which respx / pytest-httpx do not intercept)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time

import pytest
from PIL import Image

from lpt_resources.engines.base import ChatMessage, GenerationRequest, SamplingParams
from lpt_resources.engines.openai_engine import NO_IMAGES, NO_PREFILL, OpenAIEngine
from tests.fake_openai_server import FakeOpenAIServer, conversation_key

KEY_ENV = "LPT_TEST_OPENAI_KEY"
SECRET = "sk-lpt-DISTINCTIVE-7f3a9c1e5b"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


@pytest.fixture
def serve():
    servers: list[FakeOpenAIServer] = []

    def start(*args, **kwargs) -> FakeOpenAIServer:
        server = FakeOpenAIServer(*args, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def make_engine(server: FakeOpenAIServer, **kw) -> OpenAIEngine:
    defaults = dict(
        model="fake-model",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        timeout_s=0.5,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        max_concurrency=8,
    )
    defaults.update(kw)
    return OpenAIEngine(**defaults)


def request(i: int, text: str | None = None, **kw) -> GenerationRequest:
    sampling = kw.pop("sampling", SamplingParams(seed=100 + i))
    return GenerationRequest(
        request_id=f"r{i}",
        messages=(
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content=text or f"question {i}"),
        ),
        sampling=sampling,
        **kw,
    )


def expected_text(req: GenerationRequest, index: int = 0, seed: int | None = None, words: int = 6) -> str:
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    tag = f"{conversation_key(messages)}-s{req.sampling.seed if seed is None else seed}-i{index}"
    return " ".join(f"w{j}-{tag}" for j in range(words))


def dump(results) -> list[dict]:
    return [r.model_dump() for r in results]


# ---- basics


def test_generation_in_request_order_with_stats(serve, api_key):
    server = serve(delay_s=0.01)
    engine = make_engine(server)
    reqs = [request(i) for i in range(40)]
    results = engine.generate(reqs)

    assert [r.request_id for r in results] == [f"r{i}" for i in range(40)]
    for req, res in zip(reqs, results):
        assert res.error is None
        assert [c.text for c in res.completions] == [expected_text(req)]
        assert res.completions[0].finish_reason == "stop"
        assert res.completions[0].completion_tokens == 6
        assert res.completions[0].logprobs is None
        assert res.prompt_tokens == 4  # "be brief" + "question i"
    st = engine.stats
    assert (st.requests, st.samples, st.prompt_tokens, st.completion_tokens) == (40, 40, 160, 240)
    assert st.seconds > 0 and st.cost_usd == 0.0
    # The key travels as a bearer token, read from the environment at call time.
    assert set(server.auth_headers) == {f"Bearer {api_key}"}
    body = server.requests[0]
    assert body["model"] == "fake-model"
    assert body["max_tokens"] == 512 and body["temperature"] == 0.7 and body["top_p"] == 1.0
    assert "n" not in body and "response_format" not in body


def test_concurrency_bound(serve):
    server = serve(delay_s=0.05)
    engine = make_engine(server, max_concurrency=3)
    results = engine.generate([request(i) for i in range(18)])
    assert all(r.error is None for r in results)
    assert 2 <= server.max_in_flight <= 3  # bounded, and actually concurrent


def test_empty_batch(serve):
    assert make_engine(serve()).generate([]) == []


def test_callable_while_an_event_loop_runs(serve):
    server = serve()
    engine = make_engine(server)
    reqs = [request(i) for i in range(5)]

    async def inside_a_loop():
        asyncio.get_running_loop()
        return engine.generate(reqs)

    results = asyncio.run(inside_a_loop())
    assert [r.completions[0].text for r in results] == [expected_text(r) for r in reqs]


# ---- faults and retries


@pytest.mark.parametrize("fault", [429, 500, 503, "timeout", "drop", "malformed"])
def test_each_fault_is_retried(serve, fault):
    reqs = [request(i) for i in range(6)]
    clean = make_engine(serve()).generate(reqs)
    server = serve([fault, fault], timeout_sleep_s=1.0)
    results = make_engine(server).generate(reqs)
    assert dump(results) == dump(clean)
    assert all(r.error is None for r in results)
    assert len(server.requests) == 6 + 2
    assert server.behaviours.count(fault) == 2


def test_mixed_faults_under_concurrency_match_a_clean_run(serve):
    reqs = [request(i, sampling=SamplingParams(n=2, seed=i, logprobs=True)) for i in range(24)]
    clean = make_engine(serve()).generate(reqs)
    schedule = [429, "drop", 500, "malformed", 503, "timeout", 429, "malformed", "drop", 500]
    server = serve(schedule, delay_s=0.01, timeout_sleep_s=1.0)
    engine = make_engine(server, max_concurrency=6)
    results = engine.generate(reqs)
    assert dump(results) == dump(clean)
    assert len(server.requests) == 24 + len(schedule)
    assert server.max_in_flight <= 6
    assert engine.stats.samples == 48


def test_retry_after_is_honoured(serve):
    server = serve([429], retry_after="0.4")
    engine = make_engine(server, backoff_max_s=2.0)
    t0 = time.perf_counter()
    (res,) = engine.generate([request(0)])
    assert res.error is None
    assert time.perf_counter() - t0 >= 0.4


def test_request_that_keeps_failing_gets_an_error_result(serve):
    def rule(body):
        text = json.dumps(body["messages"])
        if "poison" in text:
            return 500
        if "invalid" in text:
            return 400
        return None

    server = serve(rule=rule)
    engine = make_engine(server, max_retries=2)
    reqs = [request(0), request(1, "poison pill"), request(2), request(3, "invalid thing"), request(4)]
    results = engine.generate(reqs)

    assert [r.request_id for r in results] == ["r0", "r1", "r2", "r3", "r4"]
    for i in (0, 2, 4):
        assert results[i].error is None and results[i].completions[0].text == expected_text(reqs[i])
    assert results[1].completions == [] and "500" in results[1].error and "injected 500" in results[1].error
    assert results[3].completions == [] and "400" in results[3].error
    poison_calls = sum("poison" in json.dumps(b["messages"]) for b in server.requests)
    invalid_calls = sum("invalid" in json.dumps(b["messages"]) for b in server.requests)
    assert poison_calls == 3  # first attempt + max_retries
    assert invalid_calls == 1  # a 400 is final
    assert engine.stats.requests == 5 and engine.stats.samples == 3


# ---- pre-fill


def test_prefill_continues_final_assistant_message_vllm(serve):
    server = serve()
    engine = make_engine(server)
    req = request(0, prefill="<think>")
    (res,) = engine.generate([req])
    body = server.requests[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    text = res.completions[0].text
    assert text == "continuing " + expected_text(req)
    assert "<think>" not in text


def test_prefill_sglang_and_llamacpp_dialects(serve):
    server = serve()
    make_engine(server, server_kind="sglang").generate([request(0, prefill="<think>")])
    make_engine(server, server_kind="llamacpp").generate([request(0, prefill="<think>")])
    sg, ll = server.requests
    assert sg["continue_final_message"] is True and "add_generation_prompt" not in sg
    assert sg["messages"][-1]["role"] == "assistant"
    assert ll["messages"][-1] == {"role": "assistant", "content": "<think>"}
    assert "continue_final_message" not in ll


def test_prefill_refused_where_the_server_cannot_continue(serve):
    server = serve()
    for engine in (make_engine(server, supports_prefill=False), make_engine(server, server_kind="openai")):
        results = engine.generate([request(0, prefill="<think>"), request(1)])
        assert results[0].error == NO_PREFILL and results[0].completions == []
        assert results[1].error is None
    assert len(server.requests) == 2  # the refused requests never went out


def _scored(i: int, target: str = "(A) red", **kw) -> GenerationRequest:
    return request(i, prefill="<think>\n", target=target, **kw)


def test_scoring_reads_the_targets_prompt_logprobs_from_a_vllm_server(serve, tmp_path):
    """The target ends the pre-fill of a continued assistant turn; its tokens are counted on
    the text-only chat by /tokenize; their prompt log-probabilities come back per token, with
    the image in the scored chat and never in the tokenised ones; mixed with generation."""
    from tests.fake_openai_server import fake_logprob, fake_token, token_ids

    server = serve()
    engine = make_engine(server, supports_images=True)
    image = _png(tmp_path / "a.png", (8, 8))
    results = engine.generate([_scored(0), request(1), _scored(2, "(B) blue and more", image=image)])
    assert [r.error for r in results] == [None, None, None]
    for r, target in ((results[0], "(A) red"), (results[2], "(B) blue and more")):
        assert r.completions == [] and r.target_logprobs == [fake_logprob(fake_token(w)) for w in target.split()]
    prompt = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "question 0"},
        {"role": "assistant", "content": "<think>\n"},
    ]
    assert results[0].prompt_tokens == len(token_ids(prompt, True, False))
    assert results[2].prompt_tokens == results[0].prompt_tokens + 10  # the image's placeholders
    chats = [
        b for b, path in zip(server.requests, server.paths) if path == "/v1/chat/completions" and "prompt_logprobs" in b
    ]
    tokenized = [b for b, path in zip(server.requests, server.paths) if path == "/tokenize"]
    assert len(chats) == 2 and len(tokenized) == 4
    with_image = next(b for b in chats if isinstance(b["messages"][1]["content"], list))
    assert with_image["messages"][-1] == {"role": "assistant", "content": "<think>\n(B) blue and more"}
    assert (with_image["continue_final_message"], with_image["add_generation_prompt"], with_image["max_tokens"]) == (
        True,
        False,
        1,
    )
    assert with_image["messages"][1]["content"][0]["type"] == "image_url"
    assert all(isinstance(m["content"], str) for b in tokenized for m in b["messages"])
    assert engine.stats.requests == 3 and engine.stats.completion_tokens == len(results[1].completions[0].text.split())


def test_scoring_faults_are_retried_and_an_empty_target_is_refused(serve):
    clean = make_engine(serve()).generate([_scored(0)])
    server = serve([503, "drop", 500])
    [again] = make_engine(server).generate([_scored(0)])
    assert again.error is None and again.target_logprobs == clean[0].target_logprobs
    assert server.behaviours[:3] == [503, "drop", 500] and len(server.requests) == 3 + 3
    [empty] = make_engine(server).generate([_scored(1, "")])
    assert empty.refused and "non-empty target" in empty.error


@pytest.mark.parametrize("kind", ["sglang", "llamacpp", "openai"])
def test_scoring_is_refused_by_servers_that_cannot_score(serve, kind):
    """A sampled answer must never be cached as a score: the request fails as the engine's
    (config) fault, without a call, in one line naming the setting."""
    server = serve()
    [scored, plain] = make_engine(server, server_kind=kind, supports_prefill=True).generate([_scored(0), request(1)])
    assert scored.error_kind == "engine" and "server_kind = vllm" in scored.error and "\n" not in scored.error
    assert scored.target_logprobs is None and plain.error is None
    assert len(server.requests) == 1


def test_a_server_that_returns_no_prompt_logprobs_fails_the_engine_not_the_row(serve):
    server = serve(prompt_logprobs=False)
    [r] = make_engine(server).generate([_scored(0)])
    assert r.error_kind == "engine" and "no prompt log-probabilities" in r.error
    assert len(server.requests) == 3  # two tokenisations and the chat, not retried


# ---- images


def _png(path, size):
    Image.new("RGB", size, (200, 40, 90)).save(path, format="PNG")
    return str(path)


def _decode(url: str):
    head, data = url.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(data)))


def test_image_sent_as_data_url_with_longest_side_capped(serve, tmp_path):
    server = serve()
    engine = make_engine(server, supports_images=True)
    big = _png(tmp_path / "big.png", (300, 200))
    jpg = tmp_path / "small.jpg"
    Image.new("RGB", (64, 48), (10, 120, 30)).save(jpg, format="JPEG")
    results = engine.generate(
        [
            request(0, image=big, image_max_side=100),
            request(1, image=str(jpg), image_max_side=100),
        ]
    )
    assert all(r.error is None for r in results)
    by_text = {json.dumps(b["messages"][-1]["content"][1]): b for b in server.requests}
    body0 = by_text[json.dumps({"type": "text", "text": "question 0"})]
    user = body0["messages"][-1]
    assert user["role"] == "user"
    image_part, text_part = user["content"]
    assert image_part["type"] == "image_url" and text_part == {"type": "text", "text": "question 0"}
    head, img = _decode(image_part["image_url"]["url"])
    assert head == "data:image/png;base64" and img.size == (100, 67)
    assert body0["messages"][0] == {"role": "system", "content": "be brief"}  # text-only elsewhere

    body1 = by_text[json.dumps({"type": "text", "text": "question 1"})]
    head, img = _decode(body1["messages"][-1]["content"][0]["image_url"]["url"])
    assert head == "data:image/jpeg;base64" and img.size == (64, 48)
    url = body1["messages"][-1]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == jpg.read_bytes()  # within the cap: bytes as they were


def test_image_refused_when_model_takes_none(serve, tmp_path):
    server = serve()
    (res,) = make_engine(server).generate([request(0, image=_png(tmp_path / "a.png", (8, 8)))])
    assert res.error == NO_IMAGES and server.requests == []


def test_missing_image_file_is_an_error_result(serve, tmp_path):
    server = serve()
    engine = make_engine(server, supports_images=True)
    results = engine.generate([request(0, image=str(tmp_path / "nope.png")), request(1)])
    assert results[0].error and "FileNotFoundError" in results[0].error
    assert results[1].error is None


# ---- structured outputs and sampling fields

SCHEMA = {
    "title": "MCQ",
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["question", "answer", "n"],
    "additionalProperties": False,
}


def test_structured_outputs_vllm_form(serve):
    server = serve()
    engine = make_engine(server)
    results = engine.generate([request(0, json_schema=SCHEMA), request(1, regex=r"\([A-D]\)")])
    bodies = {b["messages"][-1]["content"]: b for b in server.requests}
    js, rx = bodies["question 0"], bodies["question 1"]
    assert js["structured_outputs"] == {"json": SCHEMA}
    assert rx["structured_outputs"] == {"regex": r"\([A-D]\)"}
    for b in (js, rx):
        assert not {"guided_json", "guided_regex", "response_format", "regex"} & set(b)
    obj = json.loads(results[0].completions[0].text)
    assert set(obj) == {"question", "answer", "n"} and obj["question"].startswith("question-")
    assert results[1].completions[0].text == "(B)"


def test_structured_outputs_legacy_vllm_sglang_and_openai_forms(serve):
    server = serve()
    make_engine(server, vllm_legacy_guided=True).generate([request(0, json_schema=SCHEMA), request(1, regex="x+")])
    legacy = {b["messages"][-1]["content"]: b for b in server.requests}
    assert legacy["question 0"]["guided_json"] == SCHEMA and "structured_outputs" not in legacy["question 0"]
    assert legacy["question 1"]["guided_regex"] == "x+"

    server.requests.clear()
    make_engine(server, server_kind="sglang").generate([request(0, json_schema=SCHEMA), request(1, regex="x+")])
    sg = {b["messages"][-1]["content"]: b for b in server.requests}
    assert sg["question 0"]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sg["question 1"]["regex"] == "x+" and "structured_outputs" not in sg["question 1"]

    server.requests.clear()
    engine = make_engine(server, server_kind="openai")
    results = engine.generate([request(0, json_schema=SCHEMA), request(1, regex="x+")])
    (body,) = server.requests
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "MCQ", "schema": SCHEMA, "strict": True},
    }
    assert json.loads(results[0].completions[0].text)["answer"].startswith("answer-")
    assert results[1].error == "openai server cannot constrain output to a regex"


def test_sampling_fields_per_dialect(serve, caplog):
    server = serve()
    sampling = SamplingParams(
        temperature=0.3, top_p=0.8, top_k=20, repetition_penalty=1.05, max_tokens=64, stop=("</answer>",), seed=11
    )
    req = request(0, sampling=sampling, banned_words=("wait", "hmm"))
    for kind in ("vllm", "sglang", "llamacpp", "openai"):
        make_engine(server, server_kind=kind).generate([req])
    vl, sg, ll, oa = server.requests
    for b in (vl, sg, ll, oa):
        assert b["temperature"] == 0.3 and b["top_p"] == 0.8 and b["stop"] == ["</answer>"] and b["seed"] == 11
    assert vl["top_k"] == 20 and vl["repetition_penalty"] == 1.05 and vl["max_tokens"] == 64
    assert vl["bad_words"] == ["wait", "Wait", "hmm", "Hmm"]
    assert sg["top_k"] == 20 and sg["repetition_penalty"] == 1.05 and "bad_words" not in sg
    assert ll["top_k"] == 20 and ll["repeat_penalty"] == 1.05 and "repetition_penalty" not in ll
    assert oa["max_completion_tokens"] == 64 and "max_tokens" not in oa
    assert not {"top_k", "repetition_penalty", "bad_words"} & set(oa)
    assert "banned words are not supported" in caplog.text


def test_length_finish_and_logprobs(serve):
    server = serve()
    engine = make_engine(server)
    req = request(0, sampling=SamplingParams(max_tokens=3, logprobs=True, seed=5))
    (res,) = engine.generate([req])
    (c,) = res.completions
    assert c.finish_reason == "length"
    assert c.text == " ".join(expected_text(req).split()[:3])
    assert c.completion_tokens == 3 and c.logprobs == [-0.5, -1.0, -1.5]
    assert server.requests[0]["logprobs"] is True


# ---- samples, tokens, cost


def test_n_samples_in_one_call(serve):
    server = serve()
    req = request(0, sampling=SamplingParams(n=3, seed=7))
    (res,) = make_engine(server).generate([req])
    assert len(server.requests) == 1 and server.requests[0]["n"] == 3
    assert [c.text for c in res.completions] == [expected_text(req, i) for i in range(3)]


def test_n_remainder_requested_when_server_returns_fewer(serve):
    server = serve(max_choices=1)
    req = request(0, sampling=SamplingParams(n=3, seed=7))
    engine = make_engine(server, prices={"input": 1.0, "output": 2.0})
    (res,) = engine.generate([req])
    assert [(b.get("n"), b["seed"]) for b in server.requests] == [(3, 7), (2, 8), (None, 9)]
    assert [c.text for c in res.completions] == [expected_text(req, 0, seed=s) for s in (7, 8, 9)]
    assert res.prompt_tokens == 4  # once per request
    assert engine.stats.prompt_tokens == 4 and engine.stats.completion_tokens == 18
    assert engine.stats.cost_usd == pytest.approx((3 * 4 * 1.0 + 18 * 2.0) / 1e6)  # every call's prompt billed

    server.requests.clear()
    make_engine(server, server_kind="llamacpp").generate([req])
    assert [("n" in b, b["seed"]) for b in server.requests] == [(False, 7), (False, 8), (False, 9)]


def test_completion_tokens_split_over_choices(serve):
    server = serve(completion_tokens_override=20)
    engine = make_engine(server)
    (res,) = engine.generate([request(0, sampling=SamplingParams(n=3, seed=1))])
    assert [c.completion_tokens for c in res.completions] == [8, 6, 6]  # even split, remainder first
    (res,) = engine.generate([request(0, sampling=SamplingParams(n=3, seed=1, logprobs=True))])
    assert [c.completion_tokens for c in res.completions] == [6, 6, 6]  # per choice, from the log-probs


def test_cost_accounting(serve):
    server = serve()
    engine = make_engine(server, prices={"input": 2.5, "output": 10.0})
    engine.generate([request(i) for i in range(10)])
    assert engine.stats.cost_usd == pytest.approx((40 * 2.5 + 60 * 10.0) / 1e6)
    engine.generate([request(i) for i in range(10)])
    assert engine.stats.cost_usd == pytest.approx(2 * (40 * 2.5 + 60 * 10.0) / 1e6)
    with pytest.raises(ValueError, match="prices"):
        make_engine(server, prices={"input": 1.0})


# ---- the key stays secret


def test_api_key_never_in_repr_logs_or_errors(serve, caplog, api_key):
    caplog.set_level(logging.DEBUG)

    def rule(body):
        return "echo_auth" if "leaky" in json.dumps(body["messages"]) else None

    server = serve([500, "drop", 429], rule=rule)
    engine = make_engine(server, max_retries=3)
    results = engine.generate([request(0), request(1, "leaky server"), request(2), request(3)])
    assert results[1].error is not None and "401" in results[1].error
    assert "[redacted]" in results[1].error  # the server echoed the key; we scrubbed it
    assert all(r.error is None for i, r in enumerate(results) if i != 1)
    assert f"Bearer {api_key}" in server.auth_headers

    assert api_key not in repr(engine) and api_key not in str(engine)
    assert api_key not in repr(vars(engine))
    assert api_key not in engine.stats.model_dump_json()
    assert "retrying" in caplog.text  # the retries were logged ...
    assert api_key not in caplog.text  # ... without the key
    for r in results:
        assert api_key not in r.model_dump_json()
