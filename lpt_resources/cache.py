"""A content-addressed cache of engine responses, so reruns and resumes send only what is new.

An entry's key is the full request (without its id); its value holds all n samples in order.
Entries live under the engine's identity (what answers: kind, model, revision, dtype, settings
that change outputs; never where it is served), then per partition (a stage and a shard):

    {base}/response_cache/{model-slug}-{identity hash}/{stage}/{shard}/part-{uuid}.jsonl

A run reads only the partitions of its own stage and shards, so its cost follows its own work,
never the cache's history. Results arrive in small groups while a stage streams; each group is
one new part file, written atomically, so a crash loses at most the group not yet written.
Nothing is ever rewritten in place: `compact` merges a partition's parts into one new part and
then removes only the parts it merged, which is safe beside a concurrent writer.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

import fsspec

from lpt_resources.engines.base import GenerationRequest, GenerationResult

PART_GLOB = "part-*.jsonl"


class ResponseCache:
    def __init__(self, base: str, engine_identity: dict[str, Any]) -> None:
        identity = json.dumps(engine_identity, sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(engine_identity.get("model", "model")))[-48:].strip("-")
        self.folder = f"{base.rstrip('/')}/response_cache/{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        self._fs, self._root = fsspec.core.url_to_fs(self.folder)
        self._loaded: dict[str, dict[str, dict[str, Any]]] = {}
        self._parts: dict[str, list[str]] = {}

    @staticmethod
    def key(request: GenerationRequest) -> str:
        return request.fingerprint()

    def _folder(self, partition: str) -> str:
        return f"{self._root}/{partition}"

    def _list(self, partition: str) -> list[str]:
        folder = self._folder(partition)
        return sorted(self._fs.glob(f"{folder}/{PART_GLOB}")) if self._fs.exists(folder) else []

    def _entries(self, partition: str) -> dict[str, dict[str, Any]]:
        """The partition's entries, read on first use. A part that a concurrent compaction
        removed between the listing and the read is covered by the merged part: list again."""
        if partition not in self._loaded:
            for attempt in range(3):
                entries: dict[str, dict[str, Any]] = {}
                parts = self._list(partition)
                try:
                    for path in parts:
                        with self._fs.open(path, "rt", encoding="utf-8") as handle:
                            for line in handle:
                                entry = json.loads(line)
                                entries[entry["key"]] = entry["result"]
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            self._loaded[partition], self._parts[partition] = entries, parts
        return self._loaded[partition]

    def get(self, request: GenerationRequest, partition: str) -> GenerationResult | None:
        result = self._entries(partition).get(self.key(request))
        if result is None:
            return None
        return GenerationResult.model_validate({**result, "request_id": request.request_id})

    def put(self, partition: str, answered: Iterable[tuple[GenerationRequest, GenerationResult]]) -> int:
        """Persist one group of results as a new part; failed requests are not cached, so a
        rerun retries them. Returns how many entries were written."""
        entries = [
            {"key": self.key(request), "result": result.model_dump(mode="json", exclude={"request_id"})}
            for request, result in answered
            if result.error is None
        ]
        if entries:
            path = self._write(partition, entries)
            # only what reached the disk counts as cached
            self._entries(partition).update((e["key"], e["result"]) for e in entries)
            self._parts[partition].append(path)
        return len(entries)

    def compact(self, partition: str) -> None:
        """Merge the partition's parts into one, so a later run reads one file."""
        entries = self._entries(partition)
        parts = self._parts[partition]
        if len(parts) < 2:
            return
        merged = self._write(partition, [{"key": k, "result": v} for k, v in entries.items()])
        for path in parts:
            try:
                self._fs.rm(path)
            except FileNotFoundError:  # a concurrent compaction removed it first
                pass
        self._parts[partition] = [merged]

    def forget(self, partition: str) -> None:
        """Drop a partition's entries from memory (its files stay)."""
        self._loaded.pop(partition, None)
        self._parts.pop(partition, None)

    def _write(self, partition: str, entries: list[dict[str, Any]]) -> str:
        folder = self._folder(partition)
        self._fs.makedirs(folder, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.jsonl"
        temporary = f"{folder}/.{name}.tmp"
        target = f"{folder}/{name}"
        try:  # a full or failing disk leaves no half-written temporary behind either
            with self._fs.open(temporary, "wt", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
            self._fs.mv(temporary, target)
        finally:
            if self._fs.exists(temporary):
                self._fs.rm(temporary)
        return target
