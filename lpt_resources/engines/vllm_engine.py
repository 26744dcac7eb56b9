"""In-process vLLM engine (`vllm.LLM`): the GPU default.

One loaded `vllm.LLM` per distinct settings lives in a module-level registry, so every role,
asset and partition of a process that asks for the same model and settings shares it. Loading
happens on the first request (a process that never generates never loads it); `close()` gives
the engine's reference back and the last one shuts the engine down and frees its memory.

Streaming: `stream()` keeps the engine's queue full for a whole stage. Each request is rendered
and queued on its own (`LLM.enqueue_chat`: the same chat rendering as `LLM.chat()`, with the
chat-template flags per request, so requests that continue a pre-filled assistant turn and
requests that start a new one share the engine), and this module drives vLLM's own step loop
(`LLM.llm_engine.step()`, what `LLM.generate()` runs inside): after every step, finished
requests are handed back at once and new ones join the queue, so the engine holds
`queue_depth` requests (twice its `max_num_seqs` by default) until the feed runs dry, and
continuous batching never waits on a batch boundary. A request that fails to render (too long,
bad parameters) fails alone.

Pre-fill: the pre-fill is the final assistant message, rendered by the model's chat template
with `continue_final_message=True, add_generation_prompt=False`; it is never tokenised
separately (which could put a BOS token or a new assistant header after it).

Images: prepared by `images.py` (fsspec path or URL, decoded near the target size, RGB,
longest side capped at `image_max_side`) in a thread pool that runs ahead of the engine, once
per image and stage run however many MCQs share it, and passed in the last user message as
vLLM's PIL content part, `[{"type": "image_pil", "image_pil": img}, {"type": "text", "text":
...}]`; vLLM's renderer puts the model's image placeholder where the chat template wants it and
its multimodal processor does the rest.

Sampling parameters map one to one onto `vllm.SamplingParams` (temperature 0 is greedy, top_k
-1 is off); `logprobs=True` asks for `logprobs=0`, which returns the log-probability of each
sampled token only (vLLM's default `logprobs_mode="raw_logprobs"`: the model's distribution
before penalties, temperature and top-k/top-p; set `engine_kwargs={"logprobs_mode":
"processed_logprobs"}` for the sampled-from distribution); banned words go to `bad_words`
with their capitalised forms (vLLM adds the leading-space variants itself), as the other
engines ban them; a JSON schema or a regex becomes
`SamplingParams(structured_outputs=StructuredOutputsParams(json=... | regex=...))` (a regex
wins when both are given, as in the transformers engine). JSON comes without free whitespace,
which keeps small models from wandering into blank lines: in vLLM that is the engine-wide
`structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True}` (the
per-request flag is ignored by vLLM 0.32's backends), which `engine_kwargs` can replace. With
a seed and n > 1, vLLM gives sample i the seed + i, so reruns repeat every sample exactly.

Parallelism: `tensor_parallel_size` goes to vLLM as is. `data_parallel_size` > 1 is served by
independent replicas, one process each, with `tensor_parallel_size` GPUs apiece taken in order
from CUDA_VISIBLE_DEVICES (or 0..N-1): vLLM's offline `LLM` refuses `data_parallel_size` > 1
in one process (vLLM 0.32 raises "not supported for single-process usage" and points at its
multi-process data-parallel example, where each process runs its own `LLM`; that is what the
replicas do). The replicas pull from one shared queue: each holds up to `queue_depth`
requests, and every result it returns makes room for the next request from the feed, so a
fast replica is never idle while a slow one holds a static share. Replicas do not talk to each
other, which is all a dense model needs; for vLLM's coordinated DP (MoE expert parallelism)
run `vllm serve --data-parallel-size N` and use the OpenAI engine.

Memory on one GPU: every distinct settings key is a separate `vllm.LLM` taking
`gpu_memory_utilization` of the GPU. A stage releases its engine when its step finishes
(unless the next stage of the run uses the same settings: then the next stage picks it up
loaded), and loading one first unloads any parked one, so the paper's three models take the
GPU one after the other and each may use all of it.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    RequestFeed,
    banned_word_variants,
    target_token_count,
)
from .common import NO_IMAGES, EngineCannotServe, ErrorKind, chat_messages, describe_error, error_kind
from .images import ImagePrefetcher, load_image
from .shared import SharedModels, UsesSharedModel

log = logging.getLogger(__name__)

# JSON with no free whitespace, as the transformers engine compiles its grammars.
JSON_DISABLE_ANY_WHITESPACE = True

_FINISH = {"stop": "stop", "length": "length"}


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class LLMSettings:
    """Everything that makes two `vllm.LLM` instances different: the registry key."""

    model: str
    revision: str | None = None
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int | None = 0
    limit_mm_per_prompt: tuple[tuple[str, int], ...] | None = None
    engine_kwargs_json: str = "{}"

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        return json.loads(self.engine_kwargs_json)

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for one `vllm.LLM` (one data-parallel replica)."""
        kw: dict[str, Any] = {
            "model": self.model,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager,
        }
        if self.revision is not None:
            kw["revision"] = self.revision
        if self.seed is not None:
            kw["seed"] = self.seed
        if self.max_num_seqs is not None:
            kw["max_num_seqs"] = self.max_num_seqs
        if self.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if self.limit_mm_per_prompt is not None:
            kw["limit_mm_per_prompt"] = dict(self.limit_mm_per_prompt)
        # Compact JSON is an engine-wide switch in vLLM (0.32 ignores the per-request flag) and
        # needs a named backend: xgrammar, the grammar engine the transformers engine uses too.
        kw["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": JSON_DISABLE_ANY_WHITESPACE}
        if not _has_cuda():
            # vLLM's CPU sampler cannot resume a seeded generator across prefill chunks ("CPU
            # Generator does not use offset" kills the engine core), and every pipeline request
            # is seeded: prefill whole prompts on CPU. GPUs keep chunked prefill.
            kw["enable_chunked_prefill"] = False
        kw.update(self.engine_kwargs)
        return kw


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------
# Plain, picklable work items and results (shared by the in-process and the replica paths)


@dataclass
class _Item:
    index: int
    messages: list[dict[str, Any]]
    continue_final: bool
    sampling: dict[str, Any]  # SamplingParams keyword arguments
    structured: dict[str, Any] | None  # StructuredOutputsParams keyword arguments
    target_tokens: int = 0  # scoring: the last `target_tokens` prompt tokens are the target


@dataclass
class _Sample:
    text: str
    token_count: int
    finish_reason: str
    logprobs: list[float] | None


@dataclass
class _Raw:
    index: int
    error: str | None = None
    error_kind: ErrorKind = "engine"  # see GenerationResult.error_kind
    prompt: str | None = None
    prompt_tokens: int = 0
    samples: list[_Sample] = field(default_factory=list)
    target_logprobs: list[float] | None = None


def _sampling_params(item: _Item) -> Any:
    from vllm import SamplingParams  # pyright: ignore[reportMissingImports]  # in .venv-vllm only

    kw = dict(item.sampling)
    if item.structured is not None:
        from vllm.sampling_params import StructuredOutputsParams  # pyright: ignore[reportMissingImports]  # in .venv-vllm only

        kw["structured_outputs"] = StructuredOutputsParams(**item.structured)
    return SamplingParams(**kw)


def _chosen_logprobs(sample: Any) -> list[float] | None:
    """The log-probability of each generated token (vLLM returns the sampled token's own
    entry besides the top-k ones asked for; with logprobs=0 it is the only one)."""
    entries = getattr(sample, "logprobs", None)
    if entries is None:
        return None
    out: list[float] = []
    for tok, entry in zip(sample.token_ids, entries):
        value = entry[tok] if tok in entry else next(iter(entry.values()))
        out.append(float(getattr(value, "logprob", value)))
    return out


def _target_logprobs(output: Any, k: int) -> list[float]:
    """The prompt log-probabilities of the last `k` prompt tokens (the target), each the
    log-probability vLLM gives the token that is there (prompt_logprobs=0: its own entry)."""
    ids = list(output.prompt_token_ids)
    entries = output.prompt_logprobs
    out: list[float] = []
    for position in range(len(ids) - k, len(ids)):
        value = entries[position][ids[position]]
        out.append(float(getattr(value, "logprob", value)))
    return out


def _to_raw(item: _Item, output: Any) -> _Raw:
    if item.target_tokens:
        return _Raw(
            index=item.index,
            prompt=output.prompt,
            prompt_tokens=len(output.prompt_token_ids or []) - item.target_tokens,
            target_logprobs=_target_logprobs(output, item.target_tokens),
        )
    samples = []
    for s in sorted(output.outputs, key=lambda o: o.index):
        reason = _FINISH.get(str(s.finish_reason), "error")
        samples.append(
            _Sample(
                text=s.text,
                token_count=len(s.token_ids),
                finish_reason=reason,
                logprobs=_chosen_logprobs(s) if item.sampling.get("logprobs") is not None else None,
            )
        )
    return _Raw(
        index=item.index,
        prompt=output.prompt,
        prompt_tokens=len(output.prompt_token_ids or []),
        samples=samples,
    )


def _chat_flags(item: _Item) -> dict[str, bool]:
    if item.continue_final:
        return {"add_generation_prompt": False, "continue_final_message": True}
    return {"add_generation_prompt": True, "continue_final_message": False}


class _InFlight:
    """Requests queued in one `vllm.LLM`, by the id vLLM answers with. `enqueue_chat` returns
    vLLM's internal id (in vLLM 0.32 the id it was given, "-" and a random suffix) while
    `output.request_id` is the id it was given: both forms map to the item."""

    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._aliases: dict[str, str] = {}

    def add(self, request_id: str, item: _Item) -> None:
        self._items[request_id] = item
        if "-" in request_id:
            self._aliases[request_id.rsplit("-", 1)[0]] = request_id

    def pop(self, output_id: str) -> _Item | None:
        key = output_id if output_id in self._items else self._aliases.pop(output_id, None)
        return self._items.pop(key, None) if key is not None else None

    def ids(self) -> list[str]:
        return list(self._items)

    def drain(self) -> list[_Item]:
        items = list(self._items.values())
        self._items.clear()
        self._aliases.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


Take = Callable[[], "_Item | _Raw | None"]


def stream_items(llm: Any, take: Take, depth: int) -> Iterator[_Raw]:
    """Results of the items `take` hands out, each as soon as vLLM finishes it, while `depth`
    items are kept queued in the engine. Ends when `take` has nothing and nothing is queued.
    `take` may hand out a `_Raw` (an item that failed to prepare): it is passed on as is. A
    consumer that stops early aborts what is still queued, so the engine is left idle."""
    engine = llm.llm_engine
    queued = _InFlight()
    try:
        while True:
            while len(queued) < depth:
                item = take()
                if item is None:
                    break
                if isinstance(item, _Raw):
                    yield item
                    continue
                try:
                    ids = llm.enqueue_chat([item.messages], _sampling_params(item), use_tqdm=False, **_chat_flags(item))
                except Exception as exc:  # noqa: BLE001 - one bad request (too long, say) must not sink the rest
                    yield _Raw(index=item.index, error=describe_error(exc), error_kind="request")
                    continue
                item.messages = []  # vLLM holds the rendered prompt now; the image need not stay
                queued.add(ids[0], item)
            if not len(queued):
                return
            try:
                if not engine.has_unfinished_requests():
                    raise RuntimeError("vLLM holds none of the queued requests")
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - the engine died: what it held, and the rest, fail
                error = describe_error(exc)
                for item in queued.drain():
                    yield _Raw(index=item.index, error=error)
                while (item := take()) is not None:
                    yield item if isinstance(item, _Raw) else _Raw(index=item.index, error=error)
                return
            for output in outputs:
                if output.finished:
                    item = queued.pop(str(output.request_id))
                    if item is not None:
                        yield _to_raw(item, output)
    finally:
        if len(queued):
            try:
                engine.abort_request(queued.ids(), internal=True)
            except Exception as exc:  # noqa: BLE001 - best effort
                log.warning("vLLM abort of %d requests: %s", len(queued), exc)


# --------------------------------------------------------------------------------------------
# Runners: one `vllm.LLM` in this process, or data-parallel replicas in child processes


def _build_llm(settings: LLMSettings) -> Any:
    from vllm import LLM  # pyright: ignore[reportMissingImports]  # in .venv-vllm only

    return LLM(**settings.llm_kwargs())


def _is_multimodal(llm: Any) -> bool:
    try:
        return bool(llm.model_config.is_multimodal_model)
    except Exception:  # noqa: BLE001
        return False


def shutdown_llm(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine-core processes and free its memory.

    vLLM (0.11+, V1 engine) keeps the model in engine-core / worker processes that shut down
    through the engine-core client (`LLM.shutdown()` where a release has it); then the
    maintainers' recommended `vllm.distributed.parallel_state.cleanup_dist_env_and_memory()`
    tears down the distributed state and empties the CUDA cache."""
    try:
        if hasattr(llm, "shutdown"):
            llm.shutdown()
        else:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "shutdown"):
                engine.shutdown()
            else:
                core = getattr(engine, "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
    except Exception as exc:  # noqa: BLE001 - best effort
        log.warning("vLLM shutdown: %s", exc)


def _free_memory() -> None:
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory  # pyright: ignore[reportMissingImports]  # in .venv-vllm only

        cleanup_dist_env_and_memory()
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("cleanup_dist_env_and_memory: %s", exc)
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


class _LocalRunner:
    def __init__(self, settings: LLMSettings) -> None:
        self.llm = _build_llm(settings)
        self.is_multimodal = _is_multimodal(self.llm)
        self.max_num_seqs = _max_num_seqs(self.llm)

    def stream(self, take: Take, depth: int) -> Iterator[_Raw]:
        return stream_items(self.llm, take, depth)

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown_llm(llm)
            del llm
        _free_memory()


def _max_num_seqs(llm: Any) -> int:
    """How many sequences the engine runs at once (its scheduler's limit)."""
    try:
        return int(llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
    except Exception:  # noqa: BLE001 - an engine without that config: a safe guess
        return 256


def _replica_devices(dp: int, tp: int) -> list[str | None]:
    """The CUDA devices of each replica (None each where there is no CUDA)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if not has_cuda:
        return [None] * dp
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        visible = [str(i) for i in range(torch.cuda.device_count())]
    if len(visible) < dp * tp:
        raise ValueError(
            f"data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} GPUs, {len(visible)} visible"
        )
    return [",".join(visible[r * tp : (r + 1) * tp]) for r in range(dp)]


def _replica_main(rank: int, settings: LLMSettings, devices: str | None, conn: Any) -> None:
    """A data-parallel replica: one `vllm.LLM` on its own GPUs, streaming the items the parent
    sends as fast as it finishes others, each result sent back as it finishes."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        llm = _build_llm(settings)
        conn.send(("ready", _is_multimodal(llm), _max_num_seqs(llm)))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("failed", describe_error(exc)))
        return
    waiting: deque[_Item] = deque()
    closing = False

    def receive(block: bool) -> None:
        nonlocal closing
        while not closing and (block or conn.poll()):
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone: as if it had said close
                closing = True
                break
            if message[0] == "close":
                closing = True
            else:
                waiting.extend(message[1])
            block = False

    def take() -> _Item | None:
        receive(block=False)
        return waiting.popleft() if waiting else None

    try:
        while True:
            receive(block=not waiting)
            if closing:
                break
            for raw in stream_items(llm, take, depth=1 << 30):  # the parent bounds what is queued
                conn.send(("result", raw))
    finally:
        shutdown_llm(llm)
        del llm
        _free_memory()


class _ReplicaRunner:
    def __init__(self, settings: LLMSettings) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        dp, tp = settings.data_parallel_size, settings.tensor_parallel_size
        devices = _replica_devices(dp, tp)
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        # Not daemonic: a replica's vLLM starts processes of its own.
        for rank in range(dp):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_replica_main,
                args=(rank, settings, devices[rank], child),
                name=f"lpt-vllm-dp{rank}",
                daemon=False,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        answers = [self._recv(r) for r in range(dp)]
        failed = [a[1] for a in answers if a[0] != "ready"]
        if failed:
            self.close()
            raise RuntimeError(f"vLLM data-parallel replica failed to load: {failed[0]}")
        self.is_multimodal = bool(answers[0][1])
        self.max_num_seqs = int(answers[0][2])

    def _recv(self, rank: int) -> tuple:
        try:
            return self.conns[rank].recv()
        except (EOFError, OSError):
            return ("failed", f"data-parallel replica {rank} exited (code {self.procs[rank].exitcode})")

    def stream(self, take: Take, depth: int) -> Iterator[_Raw]:
        """Each replica holds up to `depth` items; the next item goes to the replica with the
        fewest, as soon as it returns one."""
        from multiprocessing.connection import wait

        held: list[dict[int, _Item]] = [{} for _ in self.conns]
        alive = [True] * len(self.conns)
        while True:
            feed_empty = False
            while open_ranks := [r for r in range(len(self.conns)) if alive[r] and len(held[r]) < depth]:
                item = take()
                if item is None:
                    feed_empty = True
                    break
                if isinstance(item, _Raw):
                    yield item
                    continue
                rank = min(open_ranks, key=lambda r: (len(held[r]), r))
                try:
                    self.conns[rank].send(("items", [item]))
                except (OSError, EOFError) as exc:  # the replica is gone: its work fails
                    alive[rank] = False
                    yield _Raw(index=item.index, error=f"data-parallel replica {rank} is gone: {describe_error(exc)}")
                    yield from self._fail(held[rank], f"data-parallel replica {rank} is gone")
                    continue
                held[rank][item.index] = item
            if not any(held):
                if not any(alive):
                    while (item := take()) is not None:
                        yield (
                            item
                            if isinstance(item, _Raw)
                            else _Raw(index=item.index, error="every data-parallel replica is gone")
                        )
                    return
                if feed_empty:
                    return
                continue
            busy = {self.conns[r]: r for r in range(len(self.conns)) if held[r]}
            for conn in wait(list(busy)):
                rank = busy[conn]
                message = self._recv(rank)
                if message[0] == "result":
                    raw = message[1]
                    held[rank].pop(raw.index, None)
                    yield raw
                else:
                    alive[rank] = False
                    yield from self._fail(held[rank], message[1])

    @staticmethod
    def _fail(held: dict[int, _Item], error: str) -> Iterator[_Raw]:
        for index in list(held):
            del held[index]
            yield _Raw(index=index, error=error)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close",))
            except Exception:  # noqa: BLE001
                pass
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


# --------------------------------------------------------------------------------------------
# The process-wide registry of loaded engines


@dataclass
class LoadedLLM:
    key: LLMSettings
    runner: Any
    load_seconds: float
    is_multimodal: bool
    max_num_seqs: int
    refs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` (None with data-parallel replicas, whose engines live elsewhere)."""
        return getattr(self.runner, "llm", None)


def _load(key: LLMSettings) -> LoadedLLM:
    t0 = time.perf_counter()
    runner = _ReplicaRunner(key) if key.data_parallel_size > 1 else _LocalRunner(key)
    seconds = time.perf_counter() - t0
    log.info(
        "loaded %s in vLLM (%s, tp=%d, dp=%d) in %.1fs",
        key.model,
        key.dtype,
        key.tensor_parallel_size,
        key.data_parallel_size,
        seconds,
    )
    return LoadedLLM(
        key=key,
        runner=runner,
        load_seconds=seconds,
        is_multimodal=runner.is_multimodal,
        max_num_seqs=runner.max_num_seqs,
    )


def _close(handle: LoadedLLM) -> None:
    with handle.lock:
        handle.runner.close()


_ENGINES: SharedModels[LLMSettings, LoadedLLM] = SharedModels(_load, _close)
loaded_engines = _ENGINES.snapshot
atexit.register(_ENGINES.close_all)


# --------------------------------------------------------------------------------------------
# The engine


class VLLMEngine(UsesSharedModel[LLMSettings, LoadedLLM], Engine):
    """`vllm.LLM` in this process behind the streaming interface.

    Args:
        model: a hub id or a local folder.
        dtype: "bfloat16" (default), "float16", "float32" or "auto".
        tensor_parallel_size: GPUs per model copy.
        data_parallel_size: model copies, each in its own process (see the module docstring).
        max_num_seqs: sequences vLLM runs at once (vLLM's default when None).
        gpu_memory_utilization: share of each GPU for weights and KV cache (vLLM's default when
            None; on CPU builds the KV cache size is VLLM_CPU_KVCACHE_SPACE GiB instead).
        max_model_len: context length (the model's own when None).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (the n samples of
            a request, a stage's shared instructions).
        enforce_eager: True turns CUDA graphs (and on CPU torch.compile) off.
        seed: the engine's seed (requests carry their own too).
        limit_mm_per_prompt: e.g. {"image": 1} for VLMs.
        engine_kwargs: anything else `vllm.LLM` / `EngineArgs` takes.
        revision: the checkpoint's revision (a branch, tag or commit of a hub repository).
        queue_depth: requests kept queued in each engine copy while a stage streams (twice
            its `max_num_seqs` when None): enough that finished sequences are replaced at once.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "bfloat16",
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int | None = 0,
        limit_mm_per_prompt: dict[str, int] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        revision: str | None = None,
        queue_depth: int | None = None,
    ) -> None:
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise ValueError("tensor_parallel_size and data_parallel_size must be >= 1")
        kwargs = dict(engine_kwargs or {})
        if "data_parallel_size" in kwargs:
            raise ValueError("set data_parallel_size as the engine's own argument, not in engine_kwargs")
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.queue_depth = queue_depth
        self.settings = LLMSettings(
            model=model,
            revision=revision,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            seed=seed,
            limit_mm_per_prompt=tuple(sorted(limit_mm_per_prompt.items())) if limit_mm_per_prompt else None,
            engine_kwargs_json=json.dumps(kwargs, sort_keys=True),
        )
        # Set True to keep the prompt text vLLM rendered for each request (request id -> text)
        # of the last stream in `last_prompts`: for tests and debugging.
        self.record_prompts = False
        self.last_prompts: dict[str, str] = {}
        self._models, self._model_key = _ENGINES, self.settings
        self._supports_images: bool | None = None
        self._special_texts: tuple[str, ...] | None = None
        self._text_tokenizer: Any = None

    # ---- lifecycle

    @property
    def llm(self) -> Any:
        """The underlying `vllm.LLM` (loads it; None with data-parallel replicas)."""
        return self.handle().llm

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        if self._handle is not None:
            return self._handle.is_multimodal
        if self._supports_images is None:
            self._supports_images = _config_is_multimodal(self.model)
        return self._supports_images

    # ---- request building (pure)

    @staticmethod
    def build_messages(req: GenerationRequest, image: Any = None) -> list[dict[str, Any]]:
        """The chat messages vLLM gets for a request: the image (a PIL image) as a PIL content
        part before the text of the last user message, the pre-fill as a final assistant
        message."""
        return chat_messages(req, {"type": "image_pil", "image_pil": image} if image is not None else None)

    @staticmethod
    def sampling_kwargs(req: GenerationRequest) -> dict[str, Any]:
        """`vllm.SamplingParams` keyword arguments for a request (structured outputs apart)."""
        s = req.sampling
        kw: dict[str, Any] = {
            "n": s.n,
            "temperature": max(0.0, s.temperature),
            "top_p": s.top_p,
            "top_k": s.top_k if s.top_k is not None and s.top_k > 0 else -1,
            "repetition_penalty": s.repetition_penalty,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            kw["stop"] = list(s.stop)
        if s.seed is not None:
            kw["seed"] = s.seed
        if s.logprobs:
            kw["logprobs"] = 0  # the sampled token's own log-probability only
        banned = banned_word_variants(req.banned_words)
        if banned:
            kw["bad_words"] = banned
        return kw

    @staticmethod
    def structured_kwargs(req: GenerationRequest) -> dict[str, Any] | None:
        """`StructuredOutputsParams` keyword arguments: a regex wins over a schema."""
        if req.regex is not None:
            return {"regex": req.regex}
        if req.json_schema is not None:
            return {"json": req.json_schema, "disable_any_whitespace": JSON_DISABLE_ANY_WHITESPACE}
        return None

    def special_texts(self) -> tuple[str, ...]:
        """The text of every special token of the model's tokenizer ("<|im_end|>", …)."""
        if self._special_texts is None:
            llm = self._handle.llm if self._handle is not None else None
            self._special_texts = _special_texts(llm.get_tokenizer() if llm is not None else None, self.model)
        return self._special_texts

    def _tokenizer(self) -> Any:
        """vLLM's tokenizer, or the checkpoint's (data-parallel replicas keep theirs apart)."""
        if self._text_tokenizer is None:
            llm = self._handle.llm if self._handle is not None else None
            if llm is not None:
                self._text_tokenizer = llm.get_tokenizer()
            else:
                from transformers import AutoTokenizer

                self._text_tokenizer = AutoTokenizer.from_pretrained(self.model, revision=self.settings.revision)
        return self._text_tokenizer

    def _target_tokens(self, req: GenerationRequest) -> int:
        """How many tokens of the rendered, scored prompt are the target's: counted on the
        text-only chat (an image adds tokens before the target, never inside it)."""
        tok = self._tokenizer()

        def ids(r: GenerationRequest) -> list[int]:
            item_flags = {"add_generation_prompt": r.prefill is None, "continue_final_message": r.prefill is not None}
            text = tok.apply_chat_template(self.build_messages(r), tokenize=False, **item_flags)
            return list(tok(text, add_special_tokens=False)["input_ids"])

        return target_token_count(ids(req), ids(req.as_scored_prompt()))

    def _item(self, index: int, req: GenerationRequest, image: Any = None) -> _Item:
        if not req.messages or not any(m.role == "user" for m in req.messages):
            raise ValueError("a request needs at least one user message")
        texts = [m.content for m in req.messages] + [req.prefill or ""] + [req.target or ""]
        found = sorted({s for s in self.special_texts() if any(s in t for t in texts)})
        if found:
            # vLLM tokenises the rendered chat with special tokens parsed, so this text would
            # act as chat markup (open or close a turn): the request is refused, not injected.
            raise ValueError(f"a message holds special-token text {found}; refused as it would act as chat markup")
        if req.target is not None:
            if not req.target:
                raise ValueError("a scoring request needs a non-empty target")
            return _Item(
                index=index,
                messages=self.build_messages(req.as_scored_prompt(), image),
                continue_final=True,
                sampling={"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0},
                structured=None,
                target_tokens=self._target_tokens(req),
            )
        return _Item(
            index=index,
            messages=self.build_messages(req, image),
            continue_final=req.prefill is not None,
            sampling=self.sampling_kwargs(req),
            structured=self.structured_kwargs(req),
        )

    def _preparer(
        self, feed: RequestFeed, requests: dict[int, GenerationRequest], lookahead: int
    ) -> tuple[Take, ImagePrefetcher]:
        """What the engine takes next: requests from `feed` as work items, the images of the
        next `lookahead` requests loading in a thread pool meanwhile (each image once)."""
        prefetcher = ImagePrefetcher(keep=max(64, lookahead))
        staged: deque[tuple[int, GenerationRequest, Any]] = deque()

        def take() -> _Item | _Raw | None:
            while len(staged) < lookahead and (entry := feed.take()) is not None:
                tag, req = entry
                requests[tag] = req
                image = prefetcher.for_request(req.image, req.image_max_side, load_image)
                staged.append((tag, req, image))
            if not staged:
                return None
            tag, req, image = staged.popleft()
            try:
                loaded = image.result() if image is not None else None  # an unreadable image is the request's fault
                if loaded is not None and not self.supports_images:
                    raise EngineCannotServe(NO_IMAGES)
                return self._item(tag, req, loaded)
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the rest
                return _Raw(index=tag, error=describe_error(exc), error_kind=error_kind(exc))

        return take, prefetcher

    # ---- generation

    def stream(self, feed: RequestFeed) -> Iterator[tuple[int, GenerationResult]]:
        handle = self.handle()
        depth = self.queue_depth or 2 * handle.max_num_seqs
        requests: dict[int, GenerationRequest] = {}
        take, prefetcher = self._preparer(feed, requests, lookahead=depth)
        self.last_prompts = {}
        started = time.perf_counter()
        try:
            with handle.lock:
                for raw in handle.runner.stream(take, depth):
                    req = requests.pop(raw.index)
                    result = self._result(req, raw)
                    self.count(result, time.perf_counter() - started)
                    started = time.perf_counter()
                    yield raw.index, result
        finally:
            prefetcher.close()

    def _result(self, req: GenerationRequest, raw: _Raw) -> GenerationResult:
        if raw.error is not None:
            return GenerationResult(
                request_id=req.request_id, prompt_tokens=raw.prompt_tokens, error=raw.error, error_kind=raw.error_kind
            )
        if self.record_prompts and raw.prompt is not None:
            self.last_prompts[req.request_id] = raw.prompt
        if req.target is not None:
            return GenerationResult(
                request_id=req.request_id, prompt_tokens=raw.prompt_tokens, target_logprobs=raw.target_logprobs
            )
        want_lp = req.sampling.logprobs
        return GenerationResult(
            request_id=req.request_id,
            prompt_tokens=raw.prompt_tokens,
            completions=[
                Completion(
                    text=s.text,
                    finish_reason=s.finish_reason,  # type: ignore[arg-type]
                    completion_tokens=s.token_count,
                    logprobs=(s.logprobs or []) if want_lp else None,
                )
                for s in raw.samples
            ],
        )


def _special_texts(tokenizer: Any, model: str) -> tuple[str, ...]:
    """Special-token texts from vLLM's tokenizer, or the checkpoint's (data-parallel replicas
    keep theirs in other processes)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts = {t.content for t in decoder.values() if getattr(t, "special", False)}
    texts |= set(getattr(tokenizer, "all_special_tokens", None) or ())
    return tuple(sorted(t for t in texts if t))


def _config_is_multimodal(model: str) -> bool:
    """Whether a checkpoint's config describes a vision-language model (without loading it)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    except Exception:  # noqa: BLE001 - unknown architecture or offline: vLLM decides at load
        return False
    return getattr(config, "vision_config", None) is not None
