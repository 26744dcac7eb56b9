"""Loaded models shared, per process, by every engine built with the same settings.

A Dagster run builds one engine per resource and step, and several can name the same model:
each model still loads once (GPU memory holds one copy), and unloads when its last user
closes, unless that user parks it for the next stage of the run (which names the same
settings). Loading a model first unloads every parked one, so one GPU never holds a model
nobody uses beside the one being loaded.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Loaded(Protocol):
    refs: int  # how many engines use it now
    load_seconds: float


K = TypeVar("K", bound=Hashable)
H = TypeVar("H", bound=Loaded)


class SharedModels(Generic[K, H]):
    """Loaded models by settings, with a count of their users. `close` stops what a model
    runs beside its weights (vLLM's engine processes); the weights go with the last reference."""

    def __init__(self, load: Callable[[K], H], close: Callable[[H], None] = lambda handle: None) -> None:
        self._load, self._close = load, close
        self._loaded: dict[K, H] = {}
        self._lock = threading.Lock()

    def acquire(self, key: K) -> H:
        """The model for `key`, loading it if no engine holds it yet (under the lock, so two
        engines asking at once load it once); parked models of other settings go first."""
        with self._lock:
            handle = self._loaded.get(key)
            if handle is None:
                for parked in [k for k, h in self._loaded.items() if h.refs == 0]:
                    self._unload(self._loaded.pop(parked))
                handle = self._loaded[key] = self._load(key)
            handle.refs += 1
            return handle

    def release(self, key: K, park: bool = False) -> None:
        """One user fewer; the last one unloads the model, or parks it loaded (`park`) for the
        next user of the same settings."""
        with self._lock:
            handle = self._loaded.get(key)
            if handle is None:
                return
            handle.refs -= 1
            if handle.refs > 0 or park:
                return
            del self._loaded[key]
        self._unload(handle)

    def unpark(self) -> None:
        """Unload every parked model (at the end of a run)."""
        with self._lock:
            parked = [self._loaded.pop(k) for k, h in list(self._loaded.items()) if h.refs == 0]
        for handle in parked:
            self._unload(handle)

    def _unload(self, handle: H) -> None:
        self._close(handle)
        del handle
        gc.collect()
        torch = sys.modules.get("torch")  # never imported just to free a cache it never filled
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def snapshot(self) -> dict[K, H]:
        """What is loaded now (for tests and diagnostics)."""
        with self._lock:
            return dict(self._loaded)

    def close_all(self) -> None:
        """Close everything, users or not (at interpreter exit); errors are not raised there."""
        with self._lock:
            handles = list(self._loaded.values())
            self._loaded.clear()
        for handle in handles:
            try:
                self._close(handle)
            except Exception:  # noqa: BLE001 - the interpreter is going away
                pass


class UsesSharedModel(Generic[K, H]):
    """An engine's side: the shared model loads on first use, and `close` gives it back."""

    _models: SharedModels[K, H]
    _model_key: K
    _handle: H | None = None

    def handle(self) -> H:
        """The shared loaded model, loading it on first use."""
        if self._handle is None:
            self._handle = self._models.acquire(self._model_key)
        return self._handle

    @property
    def load_seconds(self) -> float | None:
        return self._handle.load_seconds if self._handle else None

    def close(self, park: bool = False) -> None:
        """Give the model back; `park` keeps it loaded for the next engine of the same settings."""
        if self._handle is not None:
            self._handle = None
            self._models.release(self._model_key, park=park)

    def unpark(self) -> None:
        self._models.unpark()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
