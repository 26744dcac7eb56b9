"""A content-addressed cache of engine responses, so reruns and resumes send only what is new.

An entry's key is (engine identity, the full request without its id); its value holds all n
samples in order. Entries are written as each batch of requests completes, one file per
batch (written atomically), so a crash loses at most the batch in flight. Nothing is ever
rewritten: a rerun of a stage whose inputs did not change finds every request here, and a
change to one stage's prompt or sampling misses only that stage's requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec

from lpt_resources.engines.base import GenerationRequest, GenerationResult


class ResponseCache:
    def __init__(self, base: str, engine_identity: dict[str, Any]) -> None:
        identity = json.dumps(engine_identity, sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(engine_identity.get("model", "model")))[-48:].strip("-")
        self._folder = f"{base.rstrip('/')}/response_cache/{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        self._fs, self._root = fsspec.core.url_to_fs(self._folder)
        self._entries: dict[str, dict[str, Any]] | None = None

    @staticmethod
    def key(request: GenerationRequest) -> str:
        return request.fingerprint()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self._fs.exists(self._root):
                for path in sorted(self._fs.glob(f"{self._root}/batch-*.jsonl")):
                    with self._fs.open(path, "rt", encoding="utf-8") as handle:
                        for line in handle:
                            entry = json.loads(line)
                            self._entries[entry["key"]] = entry
        return self._entries

    def get(self, request: GenerationRequest) -> GenerationResult | None:
        entry = self._load().get(self.key(request))
        if entry is None:
            return None
        return GenerationResult.model_validate({**entry["result"], "request_id": request.request_id})

    def put(self, requests: Sequence[GenerationRequest], results: Iterable[GenerationResult]) -> int:
        """Persist one completed batch; failed requests are not cached, so a rerun retries them."""
        entries = [
            {"key": self.key(request), "result": result.model_dump(mode="json", exclude={"request_id"})}
            for request, result in zip(requests, results, strict=True)
            if result.error is None
        ]
        if entries:
            self._fs.makedirs(self._root, exist_ok=True)
            name = f"batch-{uuid.uuid4().hex}.jsonl"
            temporary = f"{self._root}/.{name}.tmp"
            try:  # a full or failing disk leaves no half-written temporary behind either
                with self._fs.open(temporary, "wt", encoding="utf-8") as handle:
                    handle.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
                self._fs.mv(temporary, f"{self._root}/{name}")
            finally:
                if self._fs.exists(temporary):
                    self._fs.rm(temporary)
            # only what reached the disk counts as cached
            self._load().update((e["key"], e) for e in entries)
        return len(entries)
