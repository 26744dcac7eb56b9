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
        raise ValueError(f"unknown engine kind {self.kind!r}; known: transformers")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "dtype": self.dtype, "device": self.device}
