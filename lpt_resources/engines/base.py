"""The one interface every engine implements; stages speak only this.

Engines stream: `stream(feed)` takes requests from a `RequestFeed` as fast as the engine has
room for them and yields each result as soon as its request finishes, so the engine's queue
never drains at a batch boundary. A feed may grow while it streams (a truncated output's retry
joins it as soon as the first attempt returns); the stream ends once the feed is empty and
nothing is in flight. `generate(requests)` is the same for a fixed list, in order.
"""

from __future__ import annotations

import abc
import hashlib
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False


class GenerationRequest(BaseModel):
    """One prompt. `image` goes with the last user message; `prefill` starts the assistant turn
    and is rendered as an unfinished assistant message by the chat template (never tokenised
    separately, which would put a BOS token mid-prompt)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    request_id: str
    messages: tuple[ChatMessage, ...]
    image: str | None = None  # path or fsspec URL
    image_max_side: int | None = None
    prefill: str | None = None
    sampling: SamplingParams = SamplingParams()
    json_schema: dict[str, Any] | None = None
    regex: str | None = None  # structured output by regular expression (vLLM's `regex`)
    banned_words: tuple[str, ...] = ()
    # Scoring instead of generating: the log-probability of each token of `target`, teacher-
    # forced after the prompt (and its pre-fill); `sampling` is then ignored.
    target: str | None = None

    def fingerprint(self) -> str:
        """Everything that determines the output, for caching and provenance. An unset target
        is left out, so generation requests keep the keys they had before scoring existed."""
        exclude = {"request_id"} | ({"target"} if self.target is None else set())
        blob = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def as_scored_prompt(self) -> GenerationRequest:
        """The request whose pre-fill ends with the target: the sequence that is scored."""
        return self.model_copy(update={"prefill": (self.prefill or "") + (self.target or ""), "target": None})


def target_token_count(prompt_ids: list[int], scored_ids: list[int]) -> int:
    """How many trailing tokens of the scored sequence belong to the target: those after the
    longest common prefix with the prompt alone (a token merged across the boundary counts
    as the target's, the same way in every engine)."""
    common = 0
    for a, b in zip(prompt_ids, scored_ids):
        if a != b:
            break
        common += 1
    return len(scored_ids) - common


def banned_word_variants(words: tuple[str, ...]) -> list[str]:
    """The words and their capitalised forms, as every engine bans them (servers that take
    plain words add the leading-space variants themselves)."""
    out: list[str] = []
    for word in words:
        w = word.strip()
        for variant in (w, w.capitalize()):
            if variant and variant not in out:
                out.append(variant)
    return out


class Completion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str  # generated text only, without the pre-fill
    finish_reason: Literal["stop", "length", "error"]
    completion_tokens: int
    logprobs: list[float] | None = None  # per generated token, when requested


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    request_id: str
    prompt_tokens: int
    completions: list[Completion] = Field(default_factory=list)  # n of them, in sample order
    error: str | None = None  # set when the request failed as a whole; completions is empty
    # Who failed: "request" when this request's own content cannot be served (too long for the
    # model, an unreadable image, a 400 from the server) and the row is refused; "engine" (or
    # unset) when the engine, server or its config failed and a rerun may succeed.
    error_kind: Literal["request", "engine"] | None = None
    target_logprobs: list[float] | None = None  # per target token, for a scoring request

    @property
    def refused(self) -> bool:
        """The request itself cannot be served: quarantine it rather than fail the stage."""
        return self.error is not None and self.error_kind == "request"


class EngineStats(BaseModel):
    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0  # estimated, for priced HTTP engines

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


class RequestFeed:
    """Requests waiting for an engine, each with the caller's tag, in order. The caller may
    `put` more while an engine streams from it; engines only `take`."""

    def __init__(self, items: Iterable[tuple[int, GenerationRequest]] = ()) -> None:
        self._queue: deque[tuple[int, GenerationRequest]] = deque(items)

    def put(self, tag: int, request: GenerationRequest) -> None:
        self._queue.append((tag, request))

    def take(self) -> tuple[int, GenerationRequest] | None:
        """The next request, or None when none is waiting right now."""
        return self._queue.popleft() if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)


class Engine(abc.ABC):
    """A loaded model that turns requests into results, counting what it did in `stats` (which
    the generation path reads after each stream)."""

    name: str
    model: str
    supports_images: bool = False
    queue_depth: int | None = None  # requests kept in flight while streaming (None: the engine's default)

    def __init__(self) -> None:
        self.stats = EngineStats()
        self._stats_lock = threading.Lock()

    def count(self, result: GenerationResult, seconds: float = 0.0, cost_usd: float = 0.0) -> None:
        """Add one finished request to `stats` (a failed one's prompt tokens are not counted)."""
        with self._stats_lock:
            st = self.stats
            st.requests += 1
            st.samples += len(result.completions)
            st.prompt_tokens += result.prompt_tokens if result.error is None else 0
            st.completion_tokens += sum(c.completion_tokens for c in result.completions)
            st.seconds += seconds
            st.cost_usd += cost_usd

    @abc.abstractmethod
    def stream(self, feed: RequestFeed) -> Iterator[tuple[int, GenerationResult]]:
        """(tag, result) for every request taken from `feed`, each as soon as it finishes."""

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Every request's result, in the order given."""
        results: dict[int, GenerationResult] = dict(self.stream(RequestFeed(enumerate(requests))))
        return [results[index] for index in range(len(requests))]

    def close(self, park: bool = False) -> None:  # noqa: B027  # optional: an engine with nothing to free
        """Free the model and its memory (`park`: keep it loaded for the next engine of the
        same settings in this process)."""

    def unpark(self) -> None:  # noqa: B027  # optional: an engine that never parks
        """Free models parked by engines of this kind (at the end of a run)."""
