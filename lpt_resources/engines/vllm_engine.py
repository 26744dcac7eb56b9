"""In-process vLLM engine (`vllm.LLM`): the GPU default.

One loaded `vllm.LLM` per distinct settings lives in a module-level registry, so every role,
asset and partition of a process that asks for the same model and settings shares it. Loading
happens on the first `generate()` (a process that never generates never loads it); `close()`
gives the engine's reference back and the last one shuts the engine down and frees its memory.

Batching: one `generate()` call hands every request to the engine before it waits for any of
them. Each request is rendered and queued on its own (`LLM.enqueue_chat`, which vLLM 0.32 has),
then a single `LLM.wait_for_completion()` runs them all, so continuous batching sees the whole
batch at once even when some requests continue a pre-filled assistant turn and others start a
new one (the two need different chat-template flags, which `LLM.chat()` takes per call), and a
request that fails to render (too long, bad parameters) fails alone. On a vLLM without
`enqueue_chat` the requests go through one `LLM.chat()` call per flag group instead, and a
group that raises is retried request by request so that only the bad one gets an error.

Pre-fill: the pre-fill is the final assistant message, rendered by the model's chat template
with `continue_final_message=True, add_generation_prompt=False`; it is never tokenised
separately (which could put a BOS token or a new assistant header after it).

Images: loaded here (fsspec path or URL, PIL, RGB, longest side capped at `image_max_side`)
and passed in the last user message as vLLM's PIL content part,
`[{"type": "image_pil", "image_pil": img}, {"type": "text", "text": ...}]`; vLLM's renderer
puts the model's image placeholder where the chat template wants it and its multimodal
processor does the rest.

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
multi-process data-parallel example, where each process runs its own `LLM` on its own share of
the prompts; that is what the replicas do). Each `generate()` splits its requests over the
replicas by estimated work and puts the results back in order. Replicas do not talk to each
other, which is all a dense model needs; for vLLM's coordinated DP (MoE expert parallelism)
run `vllm serve --data-parallel-size N` and use the OpenAI engine.

Memory on one GPU: every distinct settings key is a separate `vllm.LLM` and each takes
`gpu_memory_utilization` of the GPU; roles that load different models at once must share it
(for example 0.45 each), or name the same model and settings so they share one engine.
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .base import (
    banned_word_variants,
    Completion,
    Engine,
    EngineStats,
    GenerationRequest,
    GenerationResult,
)
from .shared import SharedModels, UsesSharedModel

log = logging.getLogger(__name__)

# JSON with no free whitespace, as the transformers engine compiles its grammars.
JSON_DISABLE_ANY_WHITESPACE = True

_FINISH = {"stop": "stop", "length": "length"}


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class VLLMSettings:
    """Everything that makes two `vllm.LLM` instances different: the registry key."""

    model: str
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
    cost: float = 1.0  # estimated work, for splitting over replicas


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
    error_kind: Literal["request", "engine"] = "engine"  # see GenerationResult.error_kind
    prompt: str | None = None
    prompt_tokens: int = 0
    samples: list[_Sample] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError) and msg == "model does not take images":
        return msg
    return f"{type(exc).__name__}: {msg}"


def _sampling_params(item: _Item) -> Any:
    from vllm import SamplingParams

    kw = dict(item.sampling)
    if item.structured is not None:
        from vllm.sampling_params import StructuredOutputsParams

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


def _to_raw(item: _Item, output: Any) -> _Raw:
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


def _output_index(queued: dict[str, int]) -> dict[str, int]:
    """Our item for each output id. `enqueue_chat` answers with vLLM's internal request id (in
    vLLM 0.32 the id it was given plus "-" and a random suffix) while `output.request_id` is
    the id it was given: both forms map to the item."""
    index = dict(queued)
    for internal, idx in queued.items():
        if "-" in internal:
            index.setdefault(internal.rsplit("-", 1)[0], idx)
    return index


def run_items(llm: Any, items: list[_Item]) -> list[_Raw]:
    """Run work items on one `vllm.LLM`: every request queued before any is waited on."""
    if hasattr(llm, "enqueue_chat") and hasattr(llm, "wait_for_completion"):
        return _run_enqueued(llm, items)
    return _run_chat_groups(llm, items)


def _run_enqueued(llm: Any, items: list[_Item]) -> list[_Raw]:
    results: dict[int, _Raw] = {}
    queued: dict[str, int] = {}
    by_index = {it.index: it for it in items}
    for item in items:
        try:
            params = _sampling_params(item)
            ids = llm.enqueue_chat([item.messages], params, use_tqdm=False, **_chat_flags(item))
            queued[ids[0]] = item.index
        except Exception as exc:  # noqa: BLE001 - one bad request (too long, say) must not sink the rest
            results[item.index] = _Raw(index=item.index, error=_describe(exc), error_kind="request")
    if queued:
        try:
            outputs = llm.wait_for_completion(use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - the engine died: every queued request failed
            for idx in queued.values():
                results[idx] = _Raw(index=idx, error=_describe(exc))
            outputs = []
        index = _output_index(queued)
        for out in outputs:
            idx = index.get(str(out.request_id))
            if idx is not None:
                results[idx] = _to_raw(by_index[idx], out)
    return [results.get(it.index) or _Raw(index=it.index, error="no output from the engine") for it in items]


def _run_chat_groups(llm: Any, items: list[_Item]) -> list[_Raw]:
    """Older vLLM: one `LLM.chat()` per chat-template flag group."""
    results: dict[int, _Raw] = {}
    groups: dict[bool, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.continue_final, []).append(item)
    for group in groups.values():
        ready: list[tuple[_Item, Any]] = []
        for item in group:
            try:
                ready.append((item, _sampling_params(item)))
            except Exception as exc:  # noqa: BLE001
                results[item.index] = _Raw(index=item.index, error=_describe(exc))
        if not ready:
            continue
        try:
            outs = llm.chat([it.messages for it, _ in ready], [p for _, p in ready], use_tqdm=False,
                            **_chat_flags(ready[0][0]))
            for (item, _), out in zip(ready, outs):
                results[item.index] = _to_raw(item, out)
        except Exception as exc:  # noqa: BLE001 - isolate the bad request
            log.warning("a batch of %d requests failed (%s); retrying them one by one", len(ready), exc)
            for item, params in ready:
                try:
                    out = llm.chat([item.messages], [params], use_tqdm=False, **_chat_flags(item))[0]
                    results[item.index] = _to_raw(item, out)
                except Exception as exc2:  # noqa: BLE001 - it failed alone
                    results[item.index] = _Raw(index=item.index, error=_describe(exc2), error_kind="request")
    return [results[it.index] for it in items]


# --------------------------------------------------------------------------------------------
# Runners: one `vllm.LLM` in this process, or data-parallel replicas in child processes


def _build_llm(settings: VLLMSettings) -> Any:
    from vllm import LLM

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
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

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
    def __init__(self, settings: VLLMSettings) -> None:
        self.llm = _build_llm(settings)
        self.is_multimodal = _is_multimodal(self.llm)

    def run(self, items: list[_Item]) -> list[_Raw]:
        return run_items(self.llm, items)

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown_llm(llm)
            del llm
        _free_memory()


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
        raise ValueError(f"data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} GPUs, "
                         f"{len(visible)} visible")
    return [",".join(visible[r * tp : (r + 1) * tp]) for r in range(dp)]


def _replica_main(rank: int, settings: VLLMSettings, devices: str | None, conn: Any) -> None:
    """A data-parallel replica: one `vllm.LLM` on its own GPUs, serving work items."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        llm = _build_llm(settings)
        conn.send(("ready", _is_multimodal(llm)))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("failed", _describe(exc)))
        return
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "close":
                break
            try:
                conn.send(("done", run_items(llm, msg[1])))
            except BaseException as exc:  # noqa: BLE001
                conn.send(("failed", _describe(exc)))
    finally:
        shutdown_llm(llm)
        del llm
        _free_memory()


def split_work(costs: list[float], parts: int) -> list[list[int]]:
    """Indices of `costs` split into `parts` shares of about equal total cost (largest first,
    each to the least loaded share; ties to the lowest share): deterministic."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0.0] * parts
    for i in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(parts), key=lambda p: (loads[p], p))
        shares[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shares]


class _ReplicaRunner:
    def __init__(self, settings: VLLMSettings) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        dp, tp = settings.data_parallel_size, settings.tensor_parallel_size
        devices = _replica_devices(dp, tp)
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        # Not daemonic: a replica's vLLM starts processes of its own.
        for rank in range(dp):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_replica_main, args=(rank, settings, devices[rank], child),
                               name=f"lpt-vllm-dp{rank}", daemon=False)
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

    def _recv(self, rank: int) -> tuple:
        try:
            return self.conns[rank].recv()
        except EOFError:
            return ("failed", f"data-parallel replica {rank} exited (code {self.procs[rank].exitcode})")

    def run(self, items: list[_Item]) -> list[_Raw]:
        shares = split_work([it.cost for it in items], len(self.conns))
        sent: list[int] = []
        answers: dict[int, tuple] = {}
        for rank, share in enumerate(shares):
            if share:
                try:
                    self.conns[rank].send(("run", [items[i] for i in share]))
                    sent.append(rank)
                except (OSError, EOFError) as exc:  # a replica that died earlier
                    answers[rank] = ("failed", f"data-parallel replica {rank} is gone: {_describe(exc)}")
        for rank in sent:
            answers[rank] = self._recv(rank)
        results: dict[int, _Raw] = {}
        for rank, answer in answers.items():
            if answer[0] == "done":
                for raw in answer[1]:
                    results[raw.index] = raw
            else:
                for i in shares[rank]:
                    results[items[i].index] = _Raw(index=items[i].index, error=answer[1])
        return [results[it.index] for it in items]

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
    key: VLLMSettings
    runner: Any
    load_seconds: float
    is_multimodal: bool
    refs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` (None with data-parallel replicas, whose engines live elsewhere)."""
        return getattr(self.runner, "llm", None)


def _load(key: VLLMSettings) -> LoadedLLM:
    t0 = time.perf_counter()
    runner = _ReplicaRunner(key) if key.data_parallel_size > 1 else _LocalRunner(key)
    seconds = time.perf_counter() - t0
    log.info("loaded %s in vLLM (%s, tp=%d, dp=%d) in %.1fs", key.model, key.dtype,
             key.tensor_parallel_size, key.data_parallel_size, seconds)
    return LoadedLLM(key=key, runner=runner, load_seconds=seconds, is_multimodal=runner.is_multimodal)


def _close(handle: LoadedLLM) -> None:
    with handle.lock:
        handle.runner.close()


_ENGINES: SharedModels[VLLMSettings, LoadedLLM] = SharedModels(_load, _close)
loaded_engines = _ENGINES.snapshot
atexit.register(_ENGINES.close_all)


# --------------------------------------------------------------------------------------------
# Images


def load_image(location: str, max_side: int | None) -> Any:
    """An RGB PIL image from a path or fsspec URL, its longest side capped at `max_side`."""
    import fsspec
    from PIL import Image

    with fsspec.open(location, "rb") as f:
        data = f.read()
    img = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        w, h = img.size
        scale = max_side / max(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return img


# --------------------------------------------------------------------------------------------
# The engine


class VLLMEngine(UsesSharedModel[VLLMSettings, LoadedLLM], Engine):
    """`vllm.LLM` in this process behind the batch interface.

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
    """

    name = "vllm"
    supports_json_schema = True

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
    ) -> None:
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise ValueError("tensor_parallel_size and data_parallel_size must be >= 1")
        kwargs = dict(engine_kwargs or {})
        if "data_parallel_size" in kwargs:
            raise ValueError("set data_parallel_size as the engine's own argument, not in engine_kwargs")
        self.model = model
        self.dtype = dtype
        self.settings = VLLMSettings(
            model=model,
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
        self.stats = EngineStats()
        # Set True to keep the prompt text vLLM rendered for each request (request id -> text)
        # of the last generate() call in `last_prompts`: for tests and debugging.
        self.record_prompts = False
        self.last_prompts: dict[str, str] = {}
        self._models, self._model_key = _ENGINES, self.settings
        self._supports_images: bool | None = None
        self._special_texts: tuple[str, ...] | None = None

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
        messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in req.messages]
        if image is not None:
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last_user]["content"] = [
                {"type": "image_pil", "image_pil": image},
                {"type": "text", "text": messages[last_user]["content"]},
            ]
        if req.prefill is not None:
            messages.append({"role": "assistant", "content": req.prefill})
        return messages

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

    def _item(self, index: int, req: GenerationRequest) -> _Item:
        if not req.messages or not any(m.role == "user" for m in req.messages):
            raise ValueError("a request needs at least one user message")
        texts = [m.content for m in req.messages] + [req.prefill or ""]
        found = sorted({s for s in self.special_texts() if any(s in t for t in texts)})
        if found:
            # vLLM tokenises the rendered chat with special tokens parsed, so this text would
            # act as chat markup (open or close a turn): the request is refused, not injected.
            raise ValueError(f"a message holds special-token text {found}; refused as it would act as chat markup")
        image = load_image(req.image, req.image_max_side) if req.image else None
        if image is not None and not self.supports_images:
            raise ValueError("model does not take images")
        s = req.sampling
        prompt_chars = sum(len(m.content) for m in req.messages) + len(req.prefill or "")
        return _Item(
            index=index,
            messages=self.build_messages(req, image),
            continue_final=req.prefill is not None,
            sampling=self.sampling_kwargs(req),
            structured=self.structured_kwargs(req),
            cost=prompt_chars / 4 + s.n * s.max_tokens,
        )

    # ---- generation

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        handle = self.handle()
        t0 = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        items: list[_Item] = []
        for i, req in enumerate(requests):
            try:
                items.append(self._item(i, req))
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the rest
                message = _describe(exc)
                kind = "engine" if message == "model does not take images" else "request"
                results[i] = GenerationResult(request_id=req.request_id, prompt_tokens=0, error=message, error_kind=kind)

        raws: list[_Raw] = []
        if items:
            with handle.lock:
                raws = handle.runner.run(items)

        self.last_prompts = {}
        for raw in raws:
            req = requests[raw.index]
            if raw.error is not None:
                results[raw.index] = GenerationResult(request_id=req.request_id, prompt_tokens=raw.prompt_tokens,
                                                      error=raw.error, error_kind=raw.error_kind)
                continue
            if self.record_prompts and raw.prompt is not None:
                self.last_prompts[req.request_id] = raw.prompt
            want_lp = req.sampling.logprobs
            results[raw.index] = GenerationResult(
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

        final = [r for r in results if r is not None]
        assert len(final) == len(requests)
        st = self.stats
        st.requests += len(requests)
        st.samples += sum(len(r.completions) for r in final)
        st.prompt_tokens += sum(r.prompt_tokens for r in final if r.error is None)
        st.completion_tokens += sum(c.completion_tokens for r in final for c in r.completions)
        st.seconds += time.perf_counter() - t0
        return final


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
