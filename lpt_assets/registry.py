"""Turning a caption source into registered shards, idempotently, and undoing that."""

from __future__ import annotations

import re

import fsspec
from dagster import DagsterInstance
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from lpt.config import PipelineConfig
from lpt.export.parts import Exporter
from lpt.tables import Table
from lpt_assets._dagster_compat import wipe_partitions
from lpt_assets.bulk_reads import registered_among
from lpt_assets.partitions import SHARDS, chunks, shards_in_flight
from lpt_resources.captions.sources import ShardItem, SourceSpec, parse_spec, read_items, shard
from lpt_resources.storage import ParquetStore

SHARD_MANIFEST = Table(
    "shard_manifest",
    ShardItem,
    "Each registered shard's items as its source listed them, before any check (`lpt register`).",
)
_CHUNK = 1000  # keys per query: below every database's limit on bound parameters


class RegistryError(ValueError):
    """A registration that cannot go ahead as asked; the message says what to do instead."""


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
            registered = store.read(SHARD_MANIFEST, key)
            if registered != shard_items:
                raise RegistryError(
                    f"shard {key} is already registered with different contents: register the changed "
                    "data under a new name (…?name=NEW), or replace it with `lpt register --replace`"
                )
        else:
            store.write(SHARD_MANIFEST, key, shard_items)
    keys = sorted(grouped)  # single-run backfills merge contiguous ranges: register in order
    added = add_shards(instance, keys)
    return Registration(source=spec.name, shards=keys, added=added, items=len(items))


def add_shards(instance: DagsterInstance, keys: list[str]) -> list[str]:
    """Register those of `keys` not yet registered, in order; returns them. Reads the
    membership of `keys` only, so the cost follows the new shards, not all of them."""
    known = set().union(*(registered_among(instance, SHARDS, part) for part in chunks(keys, _CHUNK)))
    added = [key for key in keys if key not in known]
    for part in chunks(added, _CHUNK):
        try:
            instance.add_dynamic_partitions(SHARDS, part)
        except IntegrityError:
            # Another registration of the same source added some keys between Dagster's check
            # and its insert; a second call sees them and adds only the rest.
            instance.add_dynamic_partitions(SHARDS, part)
    return added


class Unregistration(BaseModel):
    shards: list[str]
    tables: int  # Parquet tables removed, every stage together
    cache_partitions: int  # response-cache folders removed
    exported: list[str]  # shards whose export parts were removed


def registered_shards(spec: SourceSpec, store: ParquetStore, instance: DagsterInstance) -> list[str]:
    """The registered shards this spec's source (and split, when the spec names one) made,
    told by their key and the source recorded in their item list."""
    split = spec.options.get("split")
    split = split and (re.sub(r"[^A-Za-z0-9_]+", "-", split).strip("-") or "all")
    pattern = re.compile(rf"{re.escape(spec.name)}-(?P<split>.+)-[0-9]{{5}}")
    found = []
    for key in instance.get_dynamic_partitions(SHARDS):
        match = pattern.fullmatch(key)
        if match is None or (split and match["split"] != split):
            continue
        if store.exists(SHARD_MANIFEST, key):
            sources = store.read_frame(SHARD_MANIFEST, key, columns=["source"])["source"].unique().to_list()
            if sources not in ([spec.name], []):
                continue  # another source whose name merely starts alike
        found.append(key)
    return found


def unregister_shards(keys: list[str], config: PipelineConfig, instance: DagsterInstance) -> Unregistration:
    """Remove shards so a corrected spec can be registered: the dynamic partitions, their
    materialization history (no status stays behind for a shard that is gone), every stage's
    table, the response cache's partitions and the export parts. Refused while a run covers
    one of them."""
    store = ParquetStore(base=config.storage)
    busy = shards_in_flight(instance, instance.get_dynamic_partitions(SHARDS)) & set(keys)
    if busy:
        raise RegistryError(
            f"shards {', '.join(sorted(busy))} are in a queued or running run: let it finish or cancel it first"
        )
    wipe_partitions(instance, instance.get_asset_keys(), keys)
    for key in keys:
        instance.delete_dynamic_partition(SHARDS, key)
    return Unregistration(
        shards=keys,
        tables=sum(_remove_tables(store, key) for key in keys),
        cache_partitions=sum(_remove_cache_partitions(config.storage, key) for key in keys),
        exported=_drop_from_exports(config, keys),
    )


def _remove_tables(store: ParquetStore, key: str) -> int:
    """`{base}/{asset}/{key}.parquet` for every asset, the shard's item list included."""
    fs, root = fsspec.core.url_to_fs(store.base)
    if not fs.exists(root):
        return 0
    removed = 0
    for folder in fs.ls(root, detail=False):
        path = f"{folder.rstrip('/')}/{key}.parquet"
        if fs.exists(path):
            fs.rm_file(path)
            removed += 1
    return removed


def _remove_cache_partitions(base: str, key: str) -> int:
    """`{base}/response_cache/{engine}/{stage}/{key}/`: one folder per engine and stage."""
    fs, root = fsspec.core.url_to_fs(base)
    folders = fs.glob(f"{root.rstrip('/')}/response_cache/*/*/{key}")
    for folder in folders:
        fs.rm(folder, recursive=True)
    return len(folders)


def _drop_from_exports(config: PipelineConfig, keys: list[str]) -> list[str]:
    """Take the shards out of a committed export; an export with no usable state is rebuilt
    from the stored tables by its next run anyway, which no longer holds these shards."""
    # the export asset's own description of a run (imported here: that module imports this one's users)
    from lpt_assets.assets.exports import run_info

    exporter = Exporter(config.exports, config.export, run_info(config))
    state = exporter.state()
    if state is None:
        return []
    batch = exporter.begin()
    dropped = [key for key in keys if batch.drop(key)]
    if dropped:
        batch.commit(state.cursor)
    return dropped
