"""Caption sources: where images and their dense descriptions come from, split into shards.

A source is named by a spec string, so the same words work on the command line, in config and
in a sensor:

    sample                                  the bundled photos (ship inside scikit-image)
    docci:/data/docci?split=train&limit=500 DOCCI: docci_descriptions.jsonlines + images/
    manifest:/data/new/batch-07.jsonl       JSONL or Parquet rows: image (path), description[, image_id]
    hf:org/name?split=train&image=img&description=caption&id=key   a `datasets` dataset (hub id or path)

Shards are fixed, deterministic groups of items (sorted by image id), keyed
`{source}-{split}-{index:05d}`; registering the same source again yields the same shards.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import fsspec

from lpt.records import Record

SAMPLE_CAPTIONS = Path(__file__).resolve().parent / "sample" / "captions.jsonl"
DEFAULT_SHARD_SIZE = 64


class ShardItem(Record):
    """One row of a source as registered: not yet checked, or already known to be bad."""

    image_id: str
    source: str
    split: str
    image_ref: str  # local path or fsspec URL of the image file
    description: str
    error: str | None = None  # why the row could not even be read, kept for the quarantine


class SourceSpec(Record):
    kind: str
    location: str
    options: dict[str, str]

    @property
    def name(self) -> str:
        """A short, stable, key-safe name for shard keys."""
        if "name" in self.options:
            base = self.options["name"]
        elif self.kind == "sample":
            base = "sample"
        elif self.kind == "docci":
            base = "docci"
        else:
            base = Path(self.location.rstrip("/")).stem or self.kind
        return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")

    @property
    def shard_size(self) -> int:
        default = 6 if self.kind == "sample" else DEFAULT_SHARD_SIZE
        return int(self.options.get("shard_size", default))


def parse_spec(spec: str) -> SourceSpec:
    head, _, query = spec.partition("?")
    kind, _, location = head.partition(":")
    if kind not in {"docci", "manifest", "hf", "sample"} or (kind != "sample" and not location):
        raise ValueError(
            f"unknown caption source {spec!r}: use sample, docci:PATH, manifest:PATH or hf:NAME"
        )
    return SourceSpec(kind=kind, location=location, options=dict(parse_qsl(query)))


def read_items(spec: SourceSpec, image_root: str) -> list[ShardItem]:
    """All items of a source, sorted by image id. `image_root` receives images that a source
    holds in memory (HF image columns, the bundled sample) so every item has a file."""
    readers = {"sample": _sample, "docci": _docci, "manifest": _manifest, "hf": _hf}
    items = list(readers[spec.kind](spec, image_root))
    items.sort(key=lambda item: item.image_id)
    limit = spec.options.get("limit")
    if limit is not None:
        # The paper's selection: a seeded shuffle of the sorted ids, then the first N.
        random.Random(int(spec.options.get("seed", 0))).shuffle(items)
        items = sorted(items[: int(limit)], key=lambda item: item.image_id)
    return items


def shard(spec: SourceSpec, items: list[ShardItem]) -> dict[str, list[ShardItem]]:
    split = spec.options.get("split", items[0].split if items else "all")
    size = spec.shard_size
    return {
        f"{spec.name}-{split}-{index:05d}": items[start : start + size]
        for index, start in enumerate(range(0, len(items), size))
    }


def _bad_row(spec: SourceSpec, index: int, reason: str) -> ShardItem:
    return ShardItem(
        image_id=f"{spec.name}-row-{index:06d}",
        source=spec.name,
        split=spec.options.get("split", "all"),
        image_ref="",
        description="",
        error=reason,
    )


def _sample(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    skimage_data = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    fs, root = fsspec.core.url_to_fs(image_root)
    fs.makedirs(f"{root}/sample", exist_ok=True)
    for line in SAMPLE_CAPTIONS.read_text().splitlines():
        row = json.loads(line)
        target = f"{root}/sample/{row['file_name']}"
        if not fs.exists(target):
            fs.put_file(str(skimage_data / row["file_name"]), target)
        yield ShardItem(
            image_id=row["image_id"],
            source=spec.name,
            split=row["split"],
            image_ref=f"{image_root.rstrip('/')}/sample/{row['file_name']}",
            description=row["description"],
        )


def _docci(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    root = spec.location.rstrip("/")
    split = spec.options.get("split", "train")
    with fsspec.open(f"{root}/docci_descriptions.jsonlines", "rb") as handle:
        for index, raw in enumerate(handle):
            try:
                row = json.loads(raw.decode("utf-8"))
                if row["split"] != split:
                    continue
                yield ShardItem(
                    image_id=str(row["example_id"]),
                    source=spec.name,
                    split=split,
                    image_ref=f"{root}/images/{row['image_file']}",
                    description=row["description"],
                )
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
                yield _bad_row(spec, index, f"unreadable row: {type(error).__name__}: {error}")


def _manifest(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    location = spec.location
    folder = location.rsplit("/", 1)[0] if "/" in location else "."
    image_key = spec.options.get("image", "image")
    text_key = spec.options.get("description", "description")
    id_key = spec.options.get("id", "image_id")
    split = spec.options.get("split", "all")
    for index, row in _manifest_rows(location):
        if isinstance(row, str):
            yield _bad_row(spec, index, row)
            continue
        image = row.get(image_key)
        description = row.get(text_key)
        if not isinstance(image, str) or not isinstance(description, str):
            yield _bad_row(spec, index, f"row lacks string fields {image_key!r} and {text_key!r}")
            continue
        ref = image if "://" in image or image.startswith("/") else f"{folder}/{image}"
        yield ShardItem(
            image_id=str(row.get(id_key) or Path(image).stem),
            source=spec.name,
            split=split,
            image_ref=ref,
            description=description,
        )


def _manifest_rows(location: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Rows of a JSONL or Parquet manifest; an unreadable line yields its reason instead."""
    if location.endswith(".parquet"):
        import polars as pl

        with fsspec.open(location, "rb") as handle:
            frame = pl.read_parquet(io.BytesIO(handle.read()))
        yield from enumerate(frame.to_dicts())
        return
    with fsspec.open(location, "rb") as handle:
        for index, raw in enumerate(handle):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                yield index, f"unreadable line: {type(error).__name__}: {error}"
                continue
            yield index, row if isinstance(row, dict) else "line is not a JSON object"


def _hf(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    import datasets

    split = spec.options.get("split", "train")
    image_key = spec.options.get("image", "image")
    text_key = spec.options.get("description", "description")
    id_key = spec.options.get("id")
    location = spec.location
    if Path(location).exists() and (Path(location) / "dataset_dict.json").exists():
        dataset = datasets.load_from_disk(location)[split]
    elif Path(location).exists() and (Path(location) / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(location)
    else:
        dataset = datasets.load_dataset(location, split=split)
    fs, root = fsspec.core.url_to_fs(image_root)
    folder = f"{root}/{spec.name}"
    fs.makedirs(folder, exist_ok=True)
    for index, row in enumerate(dataset):
        image_id = str(row[id_key]) if id_key else f"{spec.name}-{index:07d}"
        image = row.get(image_key)
        description = row.get(text_key)
        if isinstance(image, str):
            ref = image
        elif image is not None and hasattr(image, "save"):
            ref = f"{folder}/{re.sub(r'[^A-Za-z0-9._-]+', '_', image_id)}.png"
            if not fs.exists(ref):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                with fs.open(ref, "wb") as handle:
                    handle.write(buffer.getvalue())
        else:
            yield _bad_row(spec, index, f"row {index} has no image in column {image_key!r}")
            continue
        if not isinstance(description, str):
            yield _bad_row(spec, index, f"row {index} has no text in column {text_key!r}")
            continue
        yield ShardItem(
            image_id=image_id, source=spec.name, split=split, image_ref=ref, description=description
        )
