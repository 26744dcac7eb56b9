"""Engine for any OpenAI-compatible chat-completions server: OpenAI itself, `vllm serve`,
SGLang, or llama.cpp's `llama-server`, through the `openai` SDK's async client.

Concurrency: `stream()` keeps a sliding window of requests under way on a private event loop in
a thread of its own (so it also works where the calling thread runs an event loop), with at most
`max_concurrency` HTTP calls in flight (an `asyncio.Semaphore`; a request waiting out a back-off
holds no slot); each request that finishes is handed back at once and the next one from the
feed takes its place, so the server never sees a batch drain.

Retries are ours alone (the SDK's own are switched off): 408, 409, 429, 5xx, timeouts,
connection errors and malformed bodies are retried with exponential back-off and jitter
(`tenacity`), honouring `Retry-After` up to `backoff_max_s`; other errors (400, 401, 404, 422)
are final. A request that still fails gets a `GenerationResult` with `error` set; the others
go on.

The API key is read from the environment variable `api_key_env` on each `generate()` call
("EMPTY" when unset, which local servers accept). It is never stored on the engine, and it is
scrubbed from every error text and log line this module writes.

Server dialects (`server_kind`):

================  =========================================================================
vllm              structured outputs as `extra_body.structured_outputs = {"json": schema}` or
                  `{"regex": pattern}` (vLLM >= 0.11; `vllm_legacy_guided=True` sends the old
                  `guided_json` / `guided_regex`, removed in vLLM 0.12); `top_k`,
                  `repetition_penalty`, `bad_words` in extra_body; pre-fill as a final
                  assistant message with `continue_final_message: true,
                  add_generation_prompt: false`.
sglang            JSON schema as OpenAI `response_format`; `regex`, `top_k`,
                  `repetition_penalty`, `continue_final_message` in extra_body. Banned words
                  are not supported (ignored, with a warning).
llamacpp          JSON schema as `response_format`; `top_k` and `repeat_penalty` in
                  extra_body; a final assistant message is continued by llama-server itself;
                  one choice per call (llama-server rejects `n > 1`), so n samples take n
                  calls. Regex: error result. Banned words: ignored, with a warning.
openai            `response_format` json_schema with `strict: true`; `max_completion_tokens`;
                  no regex (error result), no pre-fill (`supports_prefill` defaults to False),
                  no top_k / repetition penalty / banned words (ignored, with a warning).
================  =========================================================================

Scoring (a request with a `target`): vLLM servers only, as `_score` says: the server's chat
template renders the chat whose pre-fill ends with the target (with its image), one token is
generated and `prompt_logprobs: 0` returns the log-probability of every prompt token; the
target's tokens are counted on the text-only chat through the server's `POST /tokenize`, as the
in-process engines count them. Other server kinds return no prompt log-probabilities: their
scoring requests fail as the engine's (config) fault, before any call.

Samples: `n` is sent as asked; when a server returns fewer choices, the remainder is requested
in further calls, each with the seed (when one is set) advanced by the number of samples
already received, so the extra samples are new draws and a rerun repeats them exactly.

Token counts: `prompt_tokens` is the first call's `usage.prompt_tokens` (once per request).
Per-choice completion tokens come from the server where it gives them (a per-choice
`completion_tokens` / `usage`, vLLM's `token_ids`, or the per-token log-probs); otherwise
`usage.completion_tokens` is split evenly over the call's choices with the remainder on the
first. Cost (`prices`, USD per million input / output tokens) counts every call's tokens,
including the prompt of remainder calls, and adds up in `stats.cost_usd`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any, Literal

from .base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    RequestFeed,
    banned_word_variants,
    target_token_count,
)
from .common import NO_IMAGES, EngineCannotServe, ErrorKind, chat_messages, describe_error, error_kind, failed
from .images import ImagePrefetcher, image_data_url

log = logging.getLogger(__name__)

ServerKind = Literal["vllm", "openai", "sglang", "llamacpp"]
SERVER_KINDS: tuple[str, ...] = ("vllm", "openai", "sglang", "llamacpp")

NO_PREFILL = "server cannot continue an assistant message"

_RETRY_STATUS = frozenset({408, 409, 429})


class MalformedResponse(Exception):
    """A successful HTTP answer whose body is not a usable chat completion (retried)."""


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError)):
        return True
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUS or exc.status_code >= 500
    try:
        import httpx2
    except ImportError:  # pragma: no cover - the SDK depends on it
        return False
    return isinstance(exc, httpx2.TransportError)


def _server_error_kind(exc: BaseException) -> ErrorKind:
    """The request's own fault when the server judged it unservable (too long for the context,
    a schema it cannot compile, an image it cannot read): 400, 413 or 422. Auth, unknown-model
    and rate errors, and whatever the retries did not cure, are the deployment's."""
    import openai

    refused = isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 413, 422)
    return "request" if refused else "engine"


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds asked for by a `Retry-After` / `retry-after-ms` header, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except Exception:  # noqa: BLE001 - an unreadable header is no header
        return None


def _finish_reason(reason: str | None) -> Literal["stop", "length", "error"]:
    if reason == "length":
        return "length"
    if reason in ("error", "abort"):
        return "error"
    return "stop"  # "stop", "eos", "content_filter", "tool_calls", None, ...


def _schema_name(schema: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "output"))[:64]
    return name or "output"


class OpenAIEngine(Engine):
    """Chat completions from an OpenAI-compatible server, behind the batch interface.

    Args:
        model: the model name the server serves.
        base_url: e.g. "http://127.0.0.1:8000/v1"; None for OpenAI's default (or
            `OPENAI_BASE_URL`).
        api_key_env: the environment variable holding the API key, read on each call;
            "EMPTY" when it is unset.
        max_concurrency: most HTTP calls in flight at once.
        timeout_s: per HTTP call.
        max_retries: retries after the first attempt of each call.
        backoff_initial_s, backoff_max_s: exponential back-off (doubling from the initial
            wait, capped), with jitter over the upper half of each wait.
        supports_prefill: whether the server continues a final assistant message; None means
            True for vllm / sglang / llamacpp and False for openai.
        server_kind: "vllm" (default), "openai", "sglang" or "llamacpp": the request dialect.
        prices: {"input": USD per million prompt tokens, "output": USD per million completion
            tokens}, for `stats.cost_usd`; None for no cost accounting.
        supports_images: whether the served model takes images (the server's model decides).
        vllm_legacy_guided: send vLLM's old `guided_json` / `guided_regex` (vLLM < 0.11)
            instead of `structured_outputs`.
        extra_body: extra JSON fields for every request (e.g. `chat_template_kwargs`).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        supports_prefill: bool | None = None,
        server_kind: ServerKind = "vllm",
        prices: dict[str, float] | None = None,
        supports_images: bool = False,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        vllm_legacy_guided: bool = False,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if server_kind not in SERVER_KINDS:
            raise ValueError(f"server_kind must be one of {list(SERVER_KINDS)}, got {server_kind!r}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if backoff_initial_s < 0 or backoff_max_s < 0:
            raise ValueError("back-off times must be >= 0")
        if prices is not None:
            unknown = set(prices) - {"input", "output"}
            if unknown or not {"input", "output"} <= set(prices):
                raise ValueError('prices must have exactly the keys "input" and "output" (USD per million tokens)')
            prices = {"input": float(prices["input"]), "output": float(prices["output"])}
        super().__init__()
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.server_kind: ServerKind = server_kind
        self.supports_prefill = (server_kind != "openai") if supports_prefill is None else bool(supports_prefill)
        self.prices = prices
        self._supports_images = bool(supports_images)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.vllm_legacy_guided = bool(vllm_legacy_guided)
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random()
        self._warned: set[str] = set()

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        return self._supports_images

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, server_kind={self.server_kind!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})"
        )

    def close(self, park: bool = False) -> None:
        """Nothing to free: each stream opens and closes its own HTTP client."""

    # ---- public entry point

    def stream(self, feed: RequestFeed) -> Iterator[tuple[int, GenerationResult]]:
        """A sliding window: up to `queue_depth` requests (twice `max_concurrency` by default)
        are under way, at most `max_concurrency` of them as HTTP calls, on an event loop in a
        thread of its own; each finished request is handed back and the next one from the feed
        takes its place at once. The images of the requests in the window are prepared
        meanwhile, each once however many requests share it."""
        key = os.environ.get(self.api_key_env) or "EMPTY"
        depth = self.queue_depth or 2 * self.max_concurrency
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="openai-engine", daemon=True)
        thread.start()
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        under_way: dict[int, concurrent.futures.Future] = {}
        images = ImagePrefetcher(keep=max(64, depth))
        client = None
        try:
            client, http_slots = asyncio.run_coroutine_threadsafe(self._open(key), loop).result()
            started = time.perf_counter()
            while True:
                while len(under_way) < depth and (entry := feed.take()) is not None:
                    tag, req = entry
                    image = images.for_request(req.image, req.image_max_side, image_data_url)
                    future = asyncio.run_coroutine_threadsafe(self._one(client, key, http_slots, req, image), loop)
                    future.add_done_callback(lambda _, tag=tag: finished.put(tag))
                    under_way[tag] = future
                if not under_way:
                    return
                tag = finished.get()
                result, billed_prompt, billed_completion = under_way.pop(tag).result()
                now = time.perf_counter()
                self.count(result, now - started, self._cost(billed_prompt, billed_completion))
                started = now
                yield tag, result
        finally:
            for future in under_way.values():
                future.cancel()
            if client is not None:
                try:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
                except Exception:  # noqa: BLE001 - closing a client of a dead server
                    pass
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            images.close()

    async def _open(self, key: str) -> tuple[Any, asyncio.Semaphore]:
        """A client and the HTTP-call slots, made on the engine's event loop."""
        import openai

        client_kw: dict[str, Any] = {"api_key": key, "max_retries": 0, "timeout": self.timeout_s}
        if self.base_url is not None:
            client_kw["base_url"] = self.base_url
        return openai.AsyncOpenAI(**client_kw), asyncio.Semaphore(self.max_concurrency)

    # ---- one request

    async def _one(
        self,
        client: Any,
        key: str,
        http_slots: asyncio.Semaphore,
        req: GenerationRequest,
        image: concurrent.futures.Future | None,
    ) -> tuple[GenerationResult, int, int]:
        """(result, billed prompt tokens, billed completion tokens) for one request."""
        try:
            self._check_supported(req)
            image_url = await asyncio.wrap_future(image) if image is not None else None
            base = self._request_kwargs(req, image_url)
        except Exception as exc:  # noqa: BLE001 - a bad request (its image) must not sink the batch
            return self._failed(req, 0, exc, key, kind=error_kind(exc)), 0, 0
        if req.target is not None:
            return await self._score(client, key, http_slots, req, base)

        n = req.sampling.n
        completions: list[Completion] = []
        prompt_tokens: int | None = None
        billed_prompt = billed_completion = 0
        try:
            while len(completions) < n:
                want = n - len(completions)
                kwargs = dict(base)
                if self.server_kind != "llamacpp" and want > 1:
                    kwargs["n"] = want
                if req.sampling.seed is not None:
                    kwargs["seed"] = req.sampling.seed + len(completions)
                resp = await self._call(
                    key, http_slots, req.request_id, partial(client.chat.completions.create, **kwargs), _check_response
                )
                got, p_tokens, c_tokens = self._parse(resp, req)
                completions.extend(got[:want])
                if len(completions) < n:
                    log.debug(
                        "request %s: %d of %d samples so far; asking for the rest", req.request_id, len(completions), n
                    )
                billed_prompt += p_tokens
                billed_completion += c_tokens
                if prompt_tokens is None:
                    prompt_tokens = p_tokens
        except Exception as exc:  # noqa: BLE001 - reported on this request only
            kind = _server_error_kind(exc)
            return self._failed(req, prompt_tokens or 0, exc, key, kind=kind), billed_prompt, billed_completion
        result = GenerationResult(request_id=req.request_id, prompt_tokens=prompt_tokens or 0, completions=completions)
        return result, billed_prompt, billed_completion

    def _failed(
        self, req: GenerationRequest, prompt_tokens: int, exc: BaseException, key: str, *, kind: ErrorKind
    ) -> GenerationResult:
        msg = self._redact(describe_error(exc), key)
        log.warning("request %s failed: %s", req.request_id, msg)
        return failed(req, msg, kind, prompt_tokens)

    async def _score(
        self, client: Any, key: str, http_slots: asyncio.Semaphore, req: GenerationRequest, kwargs: dict[str, Any]
    ) -> tuple[GenerationResult, int, int]:
        """A scoring request on a vLLM server: the chat with the target as the end of a final
        assistant message, rendered by the server's chat template (with the image), one token
        generated and the prompt's log-probabilities returned (`prompt_logprobs`). The
        target's tokens are counted as VLLMEngine counts them, on the text-only chat rendered by
        the server's `/tokenize`, and must be the last tokens of the prompt the server scored."""
        root = re.sub(r"/v1/?$", "", str(client.base_url).rstrip("/"))

        def tokenize(r: GenerationRequest) -> Awaitable[Any]:
            body = {
                "model": self.model,
                "messages": self._messages(r, None),
                "add_generation_prompt": r.prefill is None,
                "continue_final_message": r.prefill is not None,
                "add_special_tokens": False,
            }
            return self._call(
                key,
                http_slots,
                req.request_id,
                partial(client.post, f"{root}/tokenize", cast_to=object, body=body),
                _check_tokens,
            )

        billed_prompt = billed_completion = 0
        try:
            alone, scored = await asyncio.gather(tokenize(req), tokenize(req.as_scored_prompt()))
            count = target_token_count(alone["tokens"], scored["tokens"])
            resp = await self._call(
                key, http_slots, req.request_id, partial(client.chat.completions.create, **kwargs), _check_response
            )
            usage = getattr(resp, "usage", None)
            billed_prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
            billed_completion = int(getattr(usage, "completion_tokens", 0) or 0)
            logprobs = _target_logprobs(resp, scored["tokens"][len(scored["tokens"]) - count :])
        except Exception as exc:  # noqa: BLE001 - reported on this request only
            kind = _server_error_kind(exc)
            return self._failed(req, 0, exc, key, kind=kind), billed_prompt, billed_completion
        result = GenerationResult(
            request_id=req.request_id, prompt_tokens=billed_prompt - count, target_logprobs=logprobs
        )
        return result, billed_prompt, billed_completion

    async def _call(
        self,
        key: str,
        http_slots: asyncio.Semaphore,
        request_id: str,
        send: Callable[[], Awaitable[Any]],
        check: Callable[[Any], None],
    ) -> Any:
        """One HTTP call (`send`), retried as the module says; `check` refuses a body that is
        not what was asked for (MalformedResponse is retried)."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "request %s: attempt %d failed (%s); retrying in %.2fs",
                request_id,
                state.attempt_number,
                self._redact(describe_error(exc), key) if exc else "?",
                wait,
            )

        resp: Any = None
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                async with http_slots:
                    resp = await send()
                check(resp)
        return resp

    def _wait(self, state: Any) -> float:
        """Exponential back-off with jitter over the upper half, at least what the server's
        Retry-After asks (capped at `backoff_max_s`)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (state.attempt_number - 1))
        wait = base / 2 + self._rng.uniform(0, base / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = _retry_after(exc)
        if asked is not None:
            wait = max(wait, min(asked, self.backoff_max_s))
        return wait

    # ---- request building

    def _check_supported(self, req: GenerationRequest) -> None:
        if not req.messages or not any(m.role == "user" for m in req.messages):
            raise EngineCannotServe("a request needs at least one user message")
        if req.image and not self.supports_images:
            raise EngineCannotServe(NO_IMAGES)
        if req.prefill is not None and not self.supports_prefill:
            raise EngineCannotServe(NO_PREFILL)
        if req.regex is not None and self.server_kind in ("openai", "llamacpp"):
            raise EngineCannotServe(f"{self.server_kind} server cannot constrain output to a regex")
        if req.target is not None:
            if self.server_kind != "vllm":  # a sampled answer would be cached as if it were a score
                raise EngineCannotServe(
                    f"a {self.server_kind} server returns no prompt log-probabilities, so it cannot score: serve the "
                    "scoring role with server_kind = vllm, or kind = transformers or vllm"
                )
            if not req.target:
                raise ValueError("a scoring request needs a non-empty target")

    def _messages(self, req: GenerationRequest, image_url: str | None) -> list[dict[str, Any]]:
        return chat_messages(
            req, {"type": "image_url", "image_url": {"url": image_url}} if image_url is not None else None
        )

    def _request_kwargs(self, req: GenerationRequest, image_url: str | None) -> dict[str, Any]:
        if req.target is not None:  # vLLM: the target ends the pre-fill; its prompt log-probs are read
            return {
                "model": self.model,
                "messages": self._messages(req.as_scored_prompt(), image_url),
                "max_tokens": 1,
                "temperature": 0.0,
                "extra_body": {
                    **self.extra_body,
                    "continue_final_message": True,
                    "add_generation_prompt": False,
                    "prompt_logprobs": 0,
                },
            }
        s = req.sampling
        kind = self.server_kind
        kw: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(req, image_url),
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        kw["max_completion_tokens" if kind == "openai" else "max_tokens"] = s.max_tokens
        if s.stop:
            kw["stop"] = list(s.stop)
        if s.logprobs:
            kw["logprobs"] = True
        extra: dict[str, Any] = dict(self.extra_body)

        if req.prefill is not None and kind in ("vllm", "sglang"):
            extra["continue_final_message"] = True
            if kind == "vllm":
                extra["add_generation_prompt"] = False

        # Structured outputs: a regex wins over a schema, as in the transformers engine.
        if req.regex is not None:
            if kind == "vllm":
                if self.vllm_legacy_guided:
                    extra["guided_regex"] = req.regex
                else:
                    extra["structured_outputs"] = {"regex": req.regex}
            else:  # sglang (openai / llamacpp were refused earlier)
                extra["regex"] = req.regex
        elif req.json_schema is not None:
            if kind == "vllm":
                if self.vllm_legacy_guided:
                    extra["guided_json"] = req.json_schema
                else:
                    extra["structured_outputs"] = {"json": req.json_schema}
            else:
                kw["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": _schema_name(req.json_schema), "schema": req.json_schema, "strict": True},
                }

        top_k = s.top_k if s.top_k is not None and s.top_k > 0 else None
        rep = s.repetition_penalty if s.repetition_penalty != 1.0 else None
        if kind in ("vllm", "sglang"):
            if top_k is not None:
                extra["top_k"] = top_k
            if rep is not None:
                extra["repetition_penalty"] = rep
        elif kind == "llamacpp":
            if top_k is not None:
                extra["top_k"] = top_k
            if rep is not None:
                extra["repeat_penalty"] = rep
        elif top_k is not None or rep is not None:
            self._warn_once("sampling", "openai server: top_k and repetition_penalty are not supported; ignored")

        if req.banned_words:
            if kind == "vllm":
                extra["bad_words"] = banned_word_variants(req.banned_words)
            else:
                self._warn_once("banned", f"{kind} server: banned words are not supported; ignored")
        if extra:
            kw["extra_body"] = extra
        return kw

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

    # ---- response parsing

    def _parse(self, resp: Any, req: GenerationRequest) -> tuple[list[Completion], int, int]:
        """(completions, prompt tokens, completion tokens) of one call."""
        choices = sorted(resp.choices, key=lambda c: getattr(c, "index", 0) or 0)
        usage = getattr(resp, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        total = getattr(usage, "completion_tokens", None) if usage is not None else None

        logprobs: list[list[float] | None] = []
        counts: list[int | None] = []
        for c in choices:
            content = getattr(getattr(c, "logprobs", None), "content", None)
            lps = [float(t.logprob) for t in content] if content is not None else None
            logprobs.append(lps)
            counts.append(_choice_tokens(c, lps))
        if any(x is None for x in counts):
            total_i = int(total or 0)
            known = sum(x for x in counts if x is not None)
            unknown = [i for i, x in enumerate(counts) if x is None]
            rest = max(0, total_i - known) if known else total_i
            share, extra = divmod(rest, len(unknown))
            for j, i in enumerate(unknown):
                counts[i] = share + (extra if j == 0 else 0)

        out = []
        for c, lps, count in zip(choices, logprobs, counts):
            text = c.message.content or ""
            out.append(
                Completion(
                    text=text,
                    finish_reason=_finish_reason(getattr(c, "finish_reason", None)),
                    completion_tokens=int(count or 0),
                    logprobs=lps if req.sampling.logprobs else None,
                )
            )
        return out, prompt, sum(int(x or 0) for x in counts)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if not self.prices:
            return 0.0
        return (prompt_tokens * self.prices["input"] + completion_tokens * self.prices["output"]) / 1_000_000

    @staticmethod
    def _redact(text: str, key: str) -> str:
        if key and key != "EMPTY":
            text = text.replace(key, "[redacted]")
        return text


def _choice_tokens(choice: Any, logprobs: list[float] | None) -> int | None:
    """A choice's own completion-token count, where the server gives one."""
    extra = getattr(choice, "model_extra", None) or {}
    usage = extra.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return usage["completion_tokens"]
    if isinstance(extra.get("completion_tokens"), int):
        return extra["completion_tokens"]
    if isinstance(extra.get("token_ids"), list):
        return len(extra["token_ids"])
    if logprobs is not None:
        return len(logprobs)
    return None


def _check_tokens(resp: Any) -> None:
    tokens = resp.get("tokens") if isinstance(resp, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise MalformedResponse("tokenize response has no token list")


def _target_logprobs(resp: Any, target_ids: list[int]) -> list[float]:
    """The log-probability the server gave each of the prompt's last tokens, which must be
    `target_ids`: vLLM's `prompt_logprobs` has one entry per prompt token after the first,
    and with prompt_logprobs=0 it holds only the token that is there (id -> its logprob)."""
    entries = getattr(resp, "prompt_logprobs", None)
    if not isinstance(entries, list):
        raise EngineCannotServe(
            "the server returned no prompt log-probabilities: is it a vLLM server (server_kind = vllm)?"
        )
    if not 0 < len(target_ids) < len(entries):
        raise MalformedResponse(f"{len(entries)} prompt log-probabilities for a target of {len(target_ids)} tokens")
    try:
        found = [
            (int(token), float(value["logprob"]))
            for entry in entries[len(entries) - len(target_ids) :]
            for token, value in entry.items()
        ]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedResponse(f"unreadable prompt log-probabilities ({exc})") from exc
    if [token for token, _ in found] != target_ids:
        raise EngineCannotServe(
            "the prompt the server scored does not end with the target's tokens (its chat template renders the "
            "pre-fill otherwise than its /tokenize does)"
        )
    return [logprob for _, logprob in found]


def _check_response(resp: Any) -> None:
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("response has no choices")
    for c in choices:
        message = getattr(c, "message", None)
        if message is None or not hasattr(message, "content"):
            raise MalformedResponse("choice without a message")
        if message.content is not None and not isinstance(message.content, str):
            raise MalformedResponse("message content is not text")
