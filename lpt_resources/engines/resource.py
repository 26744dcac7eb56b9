"""Engines as Dagster resources, one per role; the model loads on first use and is freed at
teardown, so a process that never generates never loads it."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from lpt_resources.engines.base import Engine


class EngineResource(ConfigurableResource):
    """The engine serving one role (ask, vlm, reasoner). Roles that name the same model share
    one loaded copy in the process."""

    kind: str = "transformers"
    model: str = "smollm2-135m-instruct"
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 16
    base_url: str | None = None
    server_kind: str = "vllm"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_initial_s: float = 1.0
    supports_images: bool = False
    price_input_per_million: float | None = None
    price_output_per_million: float | None = None
    # Requests per checkpoint: each batch's responses are cached as it completes, so a crash
    # loses at most this many; large enough that the engine's own batching stays full.
    checkpoint_every: int = 256
    # vllm (in-process vllm.LLM); None leaves vLLM's own default
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int | None = 0
    limit_mm_per_prompt: dict[str, int] | None = None
    engine_kwargs: dict[str, Any] = {}

    _engine: Engine | None = PrivateAttr(default=None)

    def get(self) -> Engine:
        if self._engine is None:
            self._engine = self._build()
        return self._engine

    def _build(self) -> Engine:
        if self.kind == "transformers":
            from lpt_resources.engines.transformers_engine import TransformersEngine

            return TransformersEngine(
                model=self.model,
                gguf_file=self.gguf_file,
                dtype=self.dtype,
                device=self.device,
                batch_size=self.batch_size,
            )
        if self.kind == "openai":
            from lpt_resources.engines.openai_engine import OpenAIEngine

            priced = self.price_input_per_million is not None and self.price_output_per_million is not None
            return OpenAIEngine(
                model=self.model,
                base_url=self.base_url,
                api_key_env=self.api_key_env,
                server_kind=self.server_kind,
                max_concurrency=self.max_concurrency,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_initial_s=self.backoff_initial_s,
                supports_images=self.supports_images,
                prices={"input": self.price_input_per_million, "output": self.price_output_per_million}
                if priced
                else None,
            )
        if self.kind == "vllm":
            from lpt_resources.engines.vllm_engine import VLLMEngine

            return VLLMEngine(
                model=self.model,
                dtype=self.dtype,
                tensor_parallel_size=self.tensor_parallel_size,
                data_parallel_size=self.data_parallel_size,
                max_num_seqs=self.max_num_seqs,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_len,
                enable_prefix_caching=self.enable_prefix_caching,
                enforce_eager=self.enforce_eager,
                seed=self.seed,
                limit_mm_per_prompt=dict(self.limit_mm_per_prompt) if self.limit_mm_per_prompt else None,
                engine_kwargs=dict(self.engine_kwargs),
            )
        raise ValueError(f"unknown engine kind {self.kind!r}; known: transformers, openai, vllm")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def cache_identity(self) -> dict[str, Any]:
        """What makes two engines answer a request the same way (not how fast they do it)."""
        return {
            "kind": self.kind,
            "model": self.model,
            "gguf_file": self.gguf_file,
            "dtype": self.dtype,
            "base_url": self.base_url,
            "engine_kwargs": self.engine_kwargs,  # e.g. quantization changes what vLLM writes
        }

    def describe(self) -> dict[str, Any]:
        """For metadata: what served the stage (never the key, only where it is read from)."""
        if self.kind == "openai":
            return {"kind": self.kind, "model": self.model, "base_url": self.base_url, "server_kind": self.server_kind}
        if self.kind == "vllm":
            return {"kind": self.kind, "model": self.model, "dtype": self.dtype,
                    "tensor_parallel_size": self.tensor_parallel_size, "data_parallel_size": self.data_parallel_size}
        return {"kind": self.kind, "model": self.model, "dtype": self.dtype, "device": self.device}
