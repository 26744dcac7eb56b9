"""The bridge from the method's prompts to an engine's batch interface."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from lpt.config import Sampling
from lpt.prompts import ChatPrompt, seeded_rng
from lpt_resources.cache import ResponseCache
from lpt_resources.engines.base import (
    ChatMessage,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from lpt_resources.engines.resource import EngineResource


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

    def add(self, other: GenerationStats) -> GenerationStats:
        merged = {k: getattr(self, k) + getattr(other, k) for k in GenerationStats.model_fields}
        merged["engine_seconds"] = round(merged["engine_seconds"], 3)
        return GenerationStats(**merged)

    def metadata(self) -> dict[str, Any]:
        return {**self.model_dump(), "tokens_per_second": self.tokens_per_second}


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
    )
    return request.model_copy(update={"request_id": request.fingerprint()[:24]})


def generate(
    engine: EngineResource, requests: Sequence[GenerationRequest], *, cache_base: str | None
) -> tuple[list[GenerationResult], GenerationStats]:
    """Answer every request, from the response cache where it can. What is missing goes to the
    engine in checkpoint batches (large enough to keep it busy), each written to the cache as
    it completes: a crash loses at most the batch in flight, and a fully cached stage never
    loads the model at all."""
    cache = ResponseCache(cache_base, engine.cache_identity()) if cache_base else None
    results: list[GenerationResult | None] = [None] * len(requests)
    missing: list[int] = []
    for index, request in enumerate(requests):
        hit = cache.get(request) if cache else None
        if hit is None:
            missing.append(index)
        else:
            results[index] = hit
    stats = GenerationStats(cache_hits=len(requests) - len(missing))
    step = max(1, engine.checkpoint_every)
    for start in range(0, len(missing), step):
        chunk = missing[start : start + step]
        batch = [requests[i] for i in chunk]
        stats = stats.add(_send(engine.get(), batch, results, chunk))
        if cache:
            cache.put(batch, [results[i] for i in chunk])
    failed = [r for r in results if r is not None and r.error is not None and not r.refused]
    if failed:
        # A stage that wrote its tables without these rows would look done and stay short;
        # failing it keeps the shard unmaterialized, and a rerun sends only these requests.
        # Requests the engine refused for their own content come back as results instead, for
        # the stage to quarantine: rerunning them would fail the same way forever.
        raise EngineRequestsFailed(
            f"{len(failed)} of {len(requests)} requests failed after the engine's retries "
            f"(the other responses are cached; a rerun sends only the failed ones). "
            f"First error: {failed[0].error}"
        )
    return [r for r in results if r is not None], stats


class EngineRequestsFailed(RuntimeError):
    """Some requests still failed after the engine's own retries, for reasons not their own."""


def _send(
    engine: Engine, batch: list[GenerationRequest], results: list[GenerationResult | None], slots: list[int]
) -> GenerationStats:
    cost_before = _cost(engine)
    started = time.perf_counter()
    answers = engine.generate(batch)
    seconds = time.perf_counter() - started
    for slot, answer in zip(slots, answers, strict=True):
        results[slot] = answer
    return GenerationStats(
        requests_sent=len(batch),
        samples=sum(len(r.completions) for r in answers),
        failed_requests=sum(1 for r in answers if r.error),
        prompt_tokens=sum(r.prompt_tokens for r in answers),
        completion_tokens=sum(c.completion_tokens for r in answers for c in r.completions),
        engine_seconds=round(seconds, 3),
        estimated_cost_usd=round(_cost(engine) - cost_before, 6),
    )


def _cost(engine: Engine) -> float:
    stats = getattr(engine, "stats", None)
    return stats.cost_usd if stats is not None else 0.0
