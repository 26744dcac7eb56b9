"""The bridge from the method's prompts to an engine: one stream per stage run.

`GenerationRun` takes a stage's work (shard, request, context), lazily and grouped by shard,
answers what the response cache holds, and streams the rest through the engine, which keeps
its queue full from the stage's first request to its last: no checkpoint barrier, no drain.
Each result is handed back as it finishes, and written to the cache in small groups (every
`flush_every` results or `flush_seconds`), so a crash loses only what was in flight. A result
may add follow-up work (a truncated continuation's retry), which joins the same stream at once;
`stage_run` streams a stage object's work (lpt/stage.py) this way, its retry policy as follow-ups.
When a shard's last result is in, a `ShardDone` says so, so the stage can write that shard's
tables while the engine goes on with the next. Progress (done/total, tokens per second, time
left) goes to the log at least every `progress_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from lpt.config import Sampling
from lpt.prompts import ChatPrompt, seeded_rng
from lpt.stage import FIRST, Ask, Attempt, Stage
from lpt_resources.cache import ResponseCache
from lpt_resources.engines.base import (
    ChatMessage,
    GenerationRequest,
    GenerationResult,
    RequestFeed,
    SamplingParams,
)
from lpt_resources.engines.resource import EngineResource

C = TypeVar("C")
W = TypeVar("W")

log = logging.getLogger(__name__)


class GenerationStats(BaseModel):
    """What a person wants to know about a stage's use of its engine (tokens and seconds
    count what was sent, not what came from the cache)."""

    requests_sent: int = 0
    cache_hits: int = 0
    samples: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_seconds: float = 0.0
    estimated_cost_usd: float = 0.0  # where the engine has prices configured

    @property
    def tokens_per_second(self) -> float:
        return round(self.completion_tokens / self.engine_seconds, 2) if self.engine_seconds else 0.0

    def count(self, result: GenerationResult, *, cached: bool) -> None:
        """One answer: read from the cache, or sent to the engine (answered or failed)."""
        if cached:
            self.cache_hits += 1
            return
        self.requests_sent += 1
        self.samples += len(result.completions)
        self.prompt_tokens += result.prompt_tokens if result.error is None else 0
        self.completion_tokens += sum(c.completion_tokens for c in result.completions)
        if result.error is not None:
            self.failed_requests += 1


def to_request(
    prompt: ChatPrompt,
    sampling: Sampling,
    *,
    n: int | None = None,
    max_tokens: int | None = None,
    json_schema: dict[str, Any] | None = None,
    regex: str | None = None,
    banned_words: tuple[str, ...] = (),
    image_max_side: int | None = None,
    salt: str = "",
    target: str | None = None,
) -> GenerationRequest:
    messages = [ChatMessage(role="system", content=prompt.system)] if prompt.system else []
    messages.append(ChatMessage(role="user", content=prompt.user))
    # Each request gets its own seed from its content, so a rerun samples the same way.
    seed = seeded_rng(sampling.seed, prompt.key, prompt.prefill, salt).getrandbits(31)
    request = GenerationRequest(
        request_id="",
        messages=tuple(messages),
        image=prompt.image_path,
        image_max_side=image_max_side if prompt.image_path else None,
        prefill=prompt.prefill,
        sampling=SamplingParams(
            n=n or sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=max_tokens or sampling.max_tokens,
            seed=seed,
        ),
        json_schema=json_schema,
        regex=regex,
        banned_words=banned_words,
        target=target,
    )
    return request.model_copy(update={"request_id": request.fingerprint()[:24]})


def request_for(ask: Ask) -> GenerationRequest:
    """A stage's engine-neutral request as the engines take it."""
    return to_request(
        ask.prompt,
        ask.sampling,
        n=ask.n,
        max_tokens=ask.max_tokens,
        json_schema=ask.json_schema,
        regex=ask.regex,
        banned_words=ask.banned_words,
        image_max_side=ask.image_max_side,
        salt=ask.salt,
        target=ask.target,
    )


class EngineRequestsFailed(RuntimeError):
    """Some requests still failed after the engine's own retries, for reasons not their own."""


@dataclass(frozen=True)
class Answer(Generic[C]):
    """One request's result, with the shard and the caller's context it was sent with."""

    shard: str
    request: GenerationRequest
    result: GenerationResult
    context: C
    cached: bool


@dataclass(frozen=True)
class ShardDone:
    """Every request of the shard (follow-ups included) is answered and cached. `failed`
    counts requests that failed for the engine's reasons: such a shard must not be written.
    `stats` counts the shard's own requests, cache hits and tokens (seconds and cost are the
    run's, as shards share the engine)."""

    shard: str
    failed: int
    stats: GenerationStats


FollowUp = Callable[[Answer[C]], Iterable[tuple[GenerationRequest, C]]]


@dataclass
class _Work(Generic[C]):
    shard: str
    request: GenerationRequest
    context: C


class _Feed(RequestFeed):
    """The engine's feed: follow-ups first, then the stage's work read lazily, cache hits
    answered on the way (the engine gets its first request as soon as one is missing)."""

    def __init__(self, run: GenerationRun[Any]) -> None:
        super().__init__()
        self._run = run

    def push_front(self, entry: tuple[int, GenerationRequest]) -> None:
        self._queue.appendleft(entry)

    def take(self) -> tuple[int, GenerationRequest] | None:
        entry = super().take()
        while entry is None and (tag := self._run._next_work()) is not None:
            entry = self._run._route(tag)
        if entry is not None:
            self._run._sending()
        return entry


class GenerationRun(Generic[C]):
    """One stage's work through one engine. Iterate it for `Answer`s and `ShardDone`s; after
    the iteration, `stats` holds what was sent and read. `work` must come grouped by shard
    (a shard's items contiguous); `total` (how many items `work` holds) sizes the progress
    reports. Raises `EngineRequestsFailed` at the end when requests failed for the engine's
    reasons (after caching every other result)."""

    def __init__(
        self,
        engine: EngineResource,
        work: Iterable[tuple[str, GenerationRequest, C]],
        *,
        stage: str,
        cache_base: str | None,
        total: int | None = None,
        follow_up: FollowUp[C] | None = None,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self._engine = engine
        self._source: Iterator[tuple[str, GenerationRequest, C]] | None = iter(work)
        self._stage = stage
        self._cache = ResponseCache(cache_base, engine.cache_identity()) if cache_base else None
        self._follow_up = follow_up
        self._report = report
        self._work: dict[int, _Work[C]] = {}
        self._ready: deque[tuple[int, GenerationResult] | ShardDone] = deque()
        self._pending: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._open_shard: str | None = None
        self._unwritten: dict[str, list[tuple[GenerationRequest, GenerationResult]]] = defaultdict(list)
        self._unwritten_count = 0
        self._last_flush = time.monotonic()
        self._expected = total or 0  # the work's size as announced, plus follow-ups
        self._registered = 0
        self._answered = 0
        self._first_error: str | None = None
        self.stats = GenerationStats()
        self._shard_stats: defaultdict[str, GenerationStats] = defaultdict(GenerationStats)
        self.started = time.monotonic()
        self.first_request_at: float | None = None  # seconds from the start to the engine's first request
        self._engine_started: float | None = None
        self._last_report = self.started
        self._report_lock = threading.Lock()

    # ---- the work, read lazily

    def _next_work(self) -> int | None:
        """Read the next work item (None when the work is exhausted)."""
        if self._source is None:
            return None
        try:
            shard, request, context = next(self._source)
        except StopIteration:
            self._source = None
            self._seal(self._open_shard)
            return None
        if shard != self._open_shard:
            self._seal(self._open_shard)
            self._open_shard = shard
        return self._register(shard, request, context)

    def _register(self, shard: str, request: GenerationRequest, context: C) -> int:
        tag = self._registered
        self._registered += 1
        self._work[tag] = _Work(shard, request, context)
        self._pending[shard] += 1
        return tag

    def _seal(self, shard: str | None) -> None:
        """No more work will come for this shard: done now if nothing of it is pending."""
        if shard is not None and self._pending[shard] == 0:
            self._shard_done(shard)

    def _route(self, tag: int) -> tuple[int, GenerationRequest] | None:
        """A cache hit joins the answers ready to hand back; a miss goes to the engine."""
        work = self._work[tag]
        hit = self._cache.get(work.request, self._partition(work.shard)) if self._cache else None
        if hit is not None:
            self._ready.append((tag, hit))
            return None
        return tag, work.request

    def _sending(self) -> None:
        if self.first_request_at is None:
            self.first_request_at = time.monotonic() - self.started

    def _partition(self, shard: str) -> str:
        return f"{self._stage}/{shard}"

    # ---- streaming

    def __iter__(self) -> Iterator[Answer[C] | ShardDone]:
        feed = _Feed(self)
        try:
            while True:
                yield from self._drain_ready(feed)
                first = feed.take()
                if first is None:
                    if self._ready:
                        continue
                    break
                feed.push_front(first)
                engine = self._engine.get()
                cost_before = engine.stats.cost_usd
                self._engine_started = self._engine_started or time.monotonic()
                stream_started = time.monotonic()
                with self._heartbeat():
                    for tag, result in engine.stream(feed):
                        yield from self._handed_back(tag, result, cached=False, feed=feed)
                        yield from self._drain_ready(feed)
                self.stats.engine_seconds = round(self.stats.engine_seconds + time.monotonic() - stream_started, 3)
                self.stats.estimated_cost_usd = round(
                    self.stats.estimated_cost_usd + engine.stats.cost_usd - cost_before, 6
                )
        finally:
            self._flush()
        self._progress(final=True)
        failed = sum(self._failed.values())
        if failed:
            # A stage that wrote its tables without these rows would look done and stay short;
            # failing it keeps the shards unmaterialized, and a rerun sends only these requests.
            # Requests the engine refused for their own content come back as results instead,
            # for the stage to quarantine: rerunning them would fail the same way forever.
            raise EngineRequestsFailed(
                f"{failed} of {self._registered} requests failed after the engine's retries "
                f"(the other responses are cached; a rerun sends only the failed ones). "
                f"First error: {self._first_error}"
            )

    def _drain_ready(self, feed: _Feed) -> Iterator[Answer[C] | ShardDone]:
        while self._ready:
            item = self._ready.popleft()
            if isinstance(item, ShardDone):
                yield item
            else:
                yield from self._handed_back(*item, cached=True, feed=feed)

    def _handed_back(
        self, tag: int, result: GenerationResult, *, cached: bool, feed: _Feed
    ) -> Iterator[Answer[C] | ShardDone]:
        work = self._work.pop(tag)
        answer = Answer(work.shard, work.request, result, work.context, cached)
        self._account(answer)
        for request, context in self._follow_up(answer) if self._follow_up else ():
            entry = self._route(self._register(work.shard, request, context))
            if entry is not None:
                feed.put(*entry)
            self._expected += 1
        yield answer
        self._pending[work.shard] -= 1
        sealed = work.shard != self._open_shard or self._source is None
        if self._pending[work.shard] == 0 and sealed:
            self._shard_done(work.shard)
        self._progress()

    def _account(self, answer: Answer[C]) -> None:
        result = answer.result
        self._answered += 1
        for stats in (self.stats, self._shard_stats[answer.shard]):
            stats.count(result, cached=answer.cached)
        if answer.cached:
            return
        if result.error is not None:
            if not result.refused:
                self._failed[answer.shard] += 1
                self._first_error = self._first_error or result.error
            return
        if self._cache is not None:
            self._unwritten[answer.shard].append((answer.request, result))
            self._unwritten_count += 1
            settings = self._engine
            if (
                self._unwritten_count >= settings.flush_every
                or time.monotonic() - self._last_flush >= settings.flush_seconds
            ):
                self._flush()

    def _shard_done(self, shard: str) -> None:
        self._flush(shard)
        if self._cache is not None:
            partition = self._partition(shard)
            self._cache.compact(partition)
            self._cache.forget(partition)
        self._ready.append(ShardDone(shard, self._failed[shard], self._shard_stats.pop(shard, GenerationStats())))

    def _flush(self, shard: str | None = None) -> None:
        """Write waiting results to the cache: one shard's, or every shard's."""
        if self._cache is None:
            return
        for key in [shard] if shard is not None else list(self._unwritten):
            answered = self._unwritten.pop(key, [])
            if answered:
                self._cache.put(self._partition(key), answered)
                self._unwritten_count -= len(answered)
        if shard is None:
            self._last_flush = time.monotonic()

    # ---- progress

    @contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Progress reports while the engine works, even while no result comes back (a loading
        model, a static batch running for minutes)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._engine.progress_seconds / 4):
                self._progress()

        thread = threading.Thread(target=beat, name=f"lpt-progress-{self._stage}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        with self._report_lock:
            if not final and now - self._last_report < self._engine.progress_seconds:
                return
            self._last_report = now
        stats = self.stats
        total = max(self._expected, self._registered)
        parts = [f"{self._stage}: {self._answered:,}/{total:,} requests answered"]
        if stats.cache_hits:
            parts.append(f"{stats.cache_hits:,} from the cache")
        if stats.failed_requests:
            parts.append(f"{stats.failed_requests:,} failed")
        if self._engine_started is not None:
            elapsed = now - self._engine_started
            parts.append(f"engine running for {timedelta(seconds=round(elapsed))}")
            if stats.requests_sent:
                parts.append(f"{stats.completion_tokens / elapsed:,.1f} tokens/s")
                left = total - self._answered
                if left and not final:
                    parts.append(f"about {timedelta(seconds=round(left * elapsed / stats.requests_sent))} left")
        self._report(", ".join(parts) + (" (done)" if final else ""))


@dataclass(frozen=True)
class Job(Generic[W]):
    """A stage's work item in the stream: its place in its shard's work, and which attempt."""

    position: int
    item: W
    attempt: Attempt


def stage_run(
    stage: Stage[W, Any],
    engine: EngineResource,
    work: dict[str, list[W]],
    keys: Sequence[str],
    *,
    cache_base: str | None,
    report: Callable[[str], None] = log.info,
) -> GenerationRun[Job[W]]:
    """A stage's work through one engine: each work item's first request, shard by shard, and
    the retries its stage's policy asks for, each joining the stream as soon as its reply is in."""

    def retries(answer: Answer[Job[W]]) -> Iterator[tuple[GenerationRequest, Job[W]]]:
        job = answer.context
        for slot in stage.retries(job.attempt, answer.result):
            attempt = Attempt(retry_of=slot)
            yield request_for(stage.ask(job.item, attempt)), Job(job.position, job.item, attempt)

    first = (
        (key, request_for(stage.ask(item, FIRST)), Job(position, item, FIRST))
        for key in keys
        for position, item in enumerate(work[key])
    )
    return GenerationRun(
        engine,
        first,
        stage=stage.name,
        cache_base=cache_base,
        total=sum(len(work[key]) for key in keys),
        follow_up=retries if stage.retry is not None else None,
        report=report,
    )


def generate(
    engine: EngineResource,
    requests: Sequence[GenerationRequest],
    *,
    cache_base: str | None,
    stage: str = "requests",
    shard: str = "all",
) -> tuple[list[GenerationResult], GenerationStats]:
    """Every request's result, in order, through one `GenerationRun` (for callers that want
    all the results at once: tests, benchmarks, small tools)."""
    run: GenerationRun[int] = GenerationRun(
        engine,
        ((shard, request, index) for index, request in enumerate(requests)),
        stage=stage,
        cache_base=cache_base,
        total=len(requests),
    )
    results: list[GenerationResult | None] = [None] * len(requests)
    for event in run:
        if isinstance(event, Answer):
            results[event.context] = event.result
    return [r for r in results if r is not None], run.stats
