"""The streaming generation path (`GenerationRun`) through a real engine over HTTP: answers as
they finish, follow-ups in the same stream, shards done as soon as their last answer is in,
cache writes in small groups, reruns from the cache, progress reports."""

import time

from lpt.config import Sampling
from lpt.prompts import ChatPrompt
from lpt_assets.generation import Answer, GenerationRun, ShardDone, generate, to_request
from lpt_resources.engines.base import RequestFeed
from lpt_resources.engines.openai_engine import OpenAIEngine
from lpt_resources.engines.resource import OpenAIEngineResource
from tests.fake_openai_server import FakeOpenAIServer


def _request(text: str, max_tokens: int = 8):
    return to_request(ChatPrompt(key=text, system="", user=text), Sampling(n=1, max_tokens=max_tokens))


def _slow_first(body):
    if body["messages"][-1]["content"] == "slow":
        time.sleep(0.6)
    return None


def test_openai_stream_is_a_sliding_window_not_a_batch():
    """A slow request holds one slot; the others flow past it and come back first."""
    with FakeOpenAIServer(rule=_slow_first) as server:
        engine = OpenAIEngine(model="m", base_url=server.base_url, max_concurrency=2)
        engine.queue_depth = 2
        requests = [_request("slow")] + [_request(f"fast {i}") for i in range(8)]
        order = [tag for tag, result in engine.stream(RequestFeed(enumerate(requests))) if result.error is None]
    assert order[-1] == 0 and sorted(order) == list(range(9))
    assert server.max_in_flight == 2


def _cached_lines(base) -> int:
    from pathlib import Path

    return sum(len(p.read_text().splitlines()) for p in Path(base).glob("response_cache/*/*/*/part-*.jsonl"))


def test_run_streams_follow_ups_and_marks_each_shard_done_after_its_last_answer(tmp_path):
    with FakeOpenAIServer(delay_s=0.01, reply_words=6) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, max_concurrency=3, flush_every=2)
        work = [("s0", _request(f"a{i}", max_tokens=4), ("first", i)) for i in range(4)]
        work += [("s1", _request(f"b{i}", max_tokens=20), ("first", i)) for i in range(3)]

        def retry_cut(answer):
            if answer.context[0] == "first" and answer.result.completions[0].finish_reason == "length":
                yield (
                    _request(f"retry {answer.request.messages[-1].content}", max_tokens=20),
                    ("retry", answer.context[1]),
                )

        events = list(
            GenerationRun(
                engine, iter(work), stage="stage", cache_base=str(tmp_path), total=len(work), follow_up=retry_cut
            )
        )
    answers = [e for e in events if isinstance(e, Answer)]
    done = [e for e in events if isinstance(e, ShardDone)]
    assert [d.shard for d in sorted(done, key=lambda d: d.shard)] == ["s0", "s1"] and not any(d.failed for d in done)
    # s0's answers were cut at 4 tokens: each got a retry, which came back before s0 was done
    retries = [a for a in answers if a.context[0] == "retry"]
    assert sorted(a.context[1] for a in retries) == [0, 1, 2, 3] and all(a.shard == "s0" for a in retries)
    for shard in ("s0", "s1"):
        position = events.index(next(d for d in done if d.shard == shard))
        assert all(events.index(a) < position for a in answers if a.shard == shard)
    assert _cached_lines(tmp_path) == len(answers) == 11
    # each shard counts its own requests (s0: four, and their four retries) and tokens
    stats = {d.shard: d.stats for d in done}
    assert (stats["s0"].requests_sent, stats["s1"].requests_sent) == (8, 3)
    assert stats["s0"].completion_tokens == sum(
        c.completion_tokens for a in answers if a.shard == "s0" for c in a.result.completions
    )
    assert stats["s0"].completion_tokens + stats["s1"].completion_tokens > stats["s1"].completion_tokens > 0
    # a rerun answers everything from the cache (follow-ups included) and sends nothing
    with FakeOpenAIServer() as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url)
        run = GenerationRun(engine, iter(work), stage="stage", cache_base=str(tmp_path), follow_up=retry_cut)
        events = list(run)
        again = [e for e in events if isinstance(e, Answer)]
        assert (run.stats.cache_hits, run.stats.requests_sent, len(server.requests)) == (11, 0, 0)
        assert {e.shard: (e.stats.cache_hits, e.stats.requests_sent) for e in events if isinstance(e, ShardDone)} == {
            "s0": (8, 0),
            "s1": (3, 0),
        }
    assert sorted((a.shard, a.context) for a in again) == sorted((a.shard, a.context) for a in answers)


def test_results_reach_the_cache_in_small_groups_while_the_stage_streams(tmp_path):
    """A crash mid-stage loses at most the answers not yet flushed and those in flight."""
    with FakeOpenAIServer(delay_s=0.02) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, max_concurrency=2, flush_every=3)
        run = GenerationRun(
            engine, (("s", _request(f"q{i}"), i) for i in range(20)), stage="stage", cache_base=str(tmp_path), total=20
        )
        seen = 0
        for event in run:
            if isinstance(event, Answer):
                seen += 1
                assert _cached_lines(tmp_path) >= seen - 2  # never more than flush_every - 1 behind
                if seen == 10:
                    break  # the consumer stops (as a crash would): what was answered is on disk
    assert _cached_lines(tmp_path) == 10


def test_the_engine_gets_its_first_request_before_the_work_is_all_built(tmp_path):
    """Work is read lazily: with a million requests to build, the first is sent at once."""
    built = 0

    def work():
        nonlocal built
        for i in range(1_000_000):
            built += 1
            yield "s", _request(f"q{i}"), i

    with FakeOpenAIServer() as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, max_concurrency=4)
        run = GenerationRun(engine, work(), stage="stage", cache_base=str(tmp_path), total=1_000_000)
        first = next(e for e in run if isinstance(e, Answer))
    assert first.result.error is None
    assert run.first_request_at is not None and run.first_request_at < 1.0
    assert built < 1000


def test_progress_reports_done_total_speed_and_time_left(tmp_path):
    lines: list[str] = []
    with FakeOpenAIServer(delay_s=0.05) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, max_concurrency=2, progress_seconds=0.1)
        run = GenerationRun(
            engine,
            (("s", _request(f"q{i}"), i) for i in range(12)),
            stage="simple_cots",
            cache_base=str(tmp_path),
            total=12,
            report=lines.append,
        )
        list(run)
    assert len(lines) >= 3, lines
    assert any(
        "simple_cots:" in line and "/12 requests answered" in line and "tokens/s" in line and "left" in line
        for line in lines
    )
    assert lines[-1].startswith("simple_cots: 12/12 requests answered") and lines[-1].endswith("(done)")


def test_generate_keeps_the_request_order(tmp_path):
    with FakeOpenAIServer(rule=_slow_first) as server:
        engine = OpenAIEngineResource(model="m", base_url=server.base_url, max_concurrency=4)
        requests = [_request("slow")] + [_request(f"fast {i}") for i in range(5)]
        results, stats = generate(engine, requests, cache_base=str(tmp_path))
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    assert stats.requests_sent == 6 and stats.completion_tokens > 0
