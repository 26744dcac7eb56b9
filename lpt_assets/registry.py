"""Turning a caption source into registered shards, idempotently."""

from __future__ import annotations

from dagster import DagsterInstance
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from lpt_assets.bulk_reads import registered_among
from lpt_assets.partitions import chunks, shards
from lpt_resources.captions.sources import ShardItem, parse_spec, read_items, shard
from lpt_resources.storage import ParquetStore

SHARD_MANIFEST = "shard_manifest"
_CHUNK = 1000  # keys per query: below every database's limit on bound parameters


class Registration(BaseModel):
    source: str
    shards: list[str]
    added: list[str]
    items: int


def register_source(spec_text: str, store: ParquetStore, instance: DagsterInstance) -> Registration:
    """Write each shard's item list once and add its key to the instance. A shard that already
    exists keeps its contents: registering a source twice adds nothing, and a changed source
    must come in under a new name rather than silently alter shards already processed."""
    spec = parse_spec(spec_text)
    items = read_items(spec, image_root=f"{store.base.rstrip('/')}/images")
    grouped = shard(spec, items)
    for key, shard_items in grouped.items():
        if store.exists(SHARD_MANIFEST, key):
            registered = store.read(SHARD_MANIFEST, key, ShardItem)
            if registered != shard_items:
                raise ValueError(
                    f"shard {key} is already registered with different contents; register the "
                    "changed data under a new source name (…?name=NEW) instead"
                )
        else:
            store.write(SHARD_MANIFEST, key, shard_items, ShardItem)
    keys = sorted(grouped)  # single-run backfills merge contiguous ranges: register in order
    added = add_shards(instance, keys)
    return Registration(source=spec.name, shards=keys, added=added, items=len(items))


def add_shards(instance: DagsterInstance, keys: list[str]) -> list[str]:
    """Register those of `keys` not yet registered, in order; returns them. Reads the
    membership of `keys` only, so the cost follows the new shards, not all of them."""
    known = set().union(*(registered_among(instance, shards.name, part) for part in chunks(keys, _CHUNK)))
    added = [key for key in keys if key not in known]
    for part in chunks(added, _CHUNK):
        try:
            instance.add_dynamic_partitions(shards.name, part)
        except IntegrityError:
            # Another registration of the same source added some keys between Dagster's check
            # and its insert; a second call sees them and adds only the rest.
            instance.add_dynamic_partitions(shards.name, part)
    return added
