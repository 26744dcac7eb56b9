"""The one batch interface every engine implements; stages speak only this."""

from __future__ import annotations

import abc
import hashlib
import json
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

    def fingerprint(self) -> str:
        """Everything that determines the output, for caching and provenance."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"request_id"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


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


class Engine(abc.ABC):
    """A loaded model that turns requests into results, in the order given."""

    name: str
    model: str
    supports_images: bool = False
    supports_json_schema: bool = False

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run all requests; the engine batches internally to keep its hardware busy."""

    def close(self) -> None:
        """Free the model and its memory."""
