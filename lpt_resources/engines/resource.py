"""Engines as Dagster resources, one class per engine kind and one resource per role. The model
loads on first use, so a process that never generates never loads it; a stage gives it back
when its step ends (`release`), parked for the next stage only when that stage uses the same
settings, and teardown frees the rest.

Each kind's fields mirror its settings class in lpt/config.py (`engine_resource` maps one to
the other; a test keeps the two field lists equal), and both derive their identity from
`OutputIdentity`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from lpt.config import EngineSettingsBase, OutputIdentity
from lpt_resources.engines.base import Engine


class EngineResource(ConfigurableResource):
    """The engine serving one role (ask, vlm, reasoner, judge). Roles that name the same model
    share one loaded copy in the process."""

    kind: ClassVar[str]
    described: ClassVar[tuple[str, ...]]  # the fields `describe` shows, after kind

    model: str = "smollm2-135m-instruct"
    revision: str | None = None
    # Streaming (see EngineSettingsBase): cache writes every `flush_every` results or
    # `flush_seconds`, `queue_depth` requests in flight (None: the engine's default), progress
    # every `progress_seconds`.
    flush_every: int = 64
    flush_seconds: float = 10.0
    queue_depth: int | None = None
    progress_seconds: float = 30.0

    _engine: Engine | None = PrivateAttr(default=None)
    _parked: Engine | None = PrivateAttr(default=None)

    @abc.abstractmethod
    def build(self) -> Engine:
        """A new engine of these settings (its model loads on first use, not here)."""

    def get(self) -> Engine:
        if self._engine is None:
            self._engine = self.build()
            self._engine.queue_depth = self.queue_depth
        return self._engine

    def release(self, park: bool = False) -> None:
        """Give the model back now (a stage's step is done): `park` keeps it loaded for the next
        stage of the run, which uses the same settings and picks it up; otherwise it is freed
        unless another engine in this process still uses it."""
        if self._engine is not None:
            self._engine.close(park=park)
            self._parked = self._engine if park else None
            self._engine = None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.release()
        if self._parked is not None:  # parked for a stage that never came: it goes with the run
            self._parked.unpark()
            self._parked = None

    def cache_identity(self) -> dict[str, Any]:
        """What makes two engines answer a request the same way (OutputIdentity): not how fast
        they do it nor where it is served (a `vllm serve` moved to another host still hits)."""
        return OutputIdentity.of(self).model_dump()

    def describe(self) -> dict[str, Any]:
        """For metadata: what served the stage (never the key, only where it is read from)."""
        return {"kind": self.kind, **{name: getattr(self, name) for name in self.described}}


class TransformersEngineResource(EngineResource):
    """An embedded transformers model (TransformersSettings)."""

    kind: ClassVar[str] = "transformers"
    described: ClassVar[tuple[str, ...]] = ("model", "revision", "dtype", "device")

    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 16

    def build(self) -> Engine:
        from lpt_resources.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            model=self.model,
            revision=self.revision,
            gguf_file=self.gguf_file,
            dtype=self.dtype,
            device=self.device,
            batch_size=self.batch_size,
        )


class VLLMEngineResource(EngineResource):
    """An in-process `vllm.LLM` (VLLMSettings); None leaves vLLM's own default."""

    kind: ClassVar[str] = "vllm"
    described: ClassVar[tuple[str, ...]] = ("model", "revision", "dtype", "tensor_parallel_size", "data_parallel_size")

    dtype: str = "bfloat16"
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

    def build(self) -> Engine:
        from lpt_resources.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            model=self.model,
            revision=self.revision,
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


class OpenAIEngineResource(EngineResource):
    """Any OpenAI-compatible server (OpenAISettings); the key is read from `api_key_env`."""

    kind: ClassVar[str] = "openai"
    described: ClassVar[tuple[str, ...]] = ("model", "base_url", "server_kind")

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

    def build(self) -> Engine:
        from lpt_resources.engines.openai_engine import OpenAIEngine

        inp, out = self.price_input_per_million, self.price_output_per_million
        return OpenAIEngine(
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            server_kind=self.server_kind,  # type: ignore[arg-type]  # checked by OpenAISettings and the engine
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_initial_s=self.backoff_initial_s,
            supports_images=self.supports_images,
            prices={"input": inp, "output": out} if inp is not None and out is not None else None,
        )


ENGINE_RESOURCES: dict[str, type[EngineResource]] = {
    resource.kind: resource for resource in (TransformersEngineResource, VLLMEngineResource, OpenAIEngineResource)
}


def engine_resource(settings: EngineSettingsBase) -> EngineResource:
    """The resource serving a role's settings: the class of its kind, with its fields."""
    return ENGINE_RESOURCES[settings.kind](**settings.model_dump(exclude={"kind"}))
