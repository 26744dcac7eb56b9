"""Caption sources: where images and their dense descriptions come from, split into shards.

A source is named by a spec string, so the same words work on the command line, in config and
in a sensor:

    sample                                  the bundled photos (ship inside scikit-image)
    docci:/data/docci?split=train&limit=500 DOCCI: docci_descriptions.jsonlines + images/
    manifest:/data/new/batch-07.jsonl       JSONL or Parquet rows: image (path), description[, image_id]
                                            (paths stay inside the manifest's folder or `root=`;
                                            URLs only with `allow_urls=true`)
    hf:org/name?split=train&image=img&description=caption&id=key   a `datasets` dataset (hub id or path)

Shards are fixed, deterministic groups of items (sorted by image id), keyed
`{source}-{split}-{index:05d}`; registering the same source again yields the same shards.

A row that cannot be read at all (bad JSON, bytes that are not UTF-8, a URL where only paths
are allowed, a repeated image id) still becomes an item, with `error` set to
"reason_code: detail", so it reaches the quarantine instead of failing the whole file.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

import fsspec

from lpt.records import Record
from lpt_resources.captions.validate import invalid_utf8, is_url, mark_duplicates, path_escape_problem, printable

SAMPLE_CAPTIONS = Path(__file__).resolve().parent / "sample" / "captions.jsonl"
DEFAULT_SHARD_SIZE = 64


class ShardItem(Record):
    """One row of a source as registered: not yet checked, or already known to be bad."""

    image_id: str
    source: str
    split: str
    image_ref: str  # local path or fsspec URL of the image file
    description: str
    error: str | None = None  # "reason_code: detail" when the row could not even be read
    root: str = ""  # the folder the image file must really be in (symlinks resolved); "" unchecked


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


class SpecError(ValueError):
    """A source spec the user must correct: the message is one line naming what and how."""


_WHOLE = r"[0-9]+"
_FLAG = {"true", "false", "1", "0", "yes", "no"}
# option -> (what a value must be, a check); every source takes the common ones
_COMMON = {
    "name": ("a name with at least one letter or digit", lambda v: bool(re.search(r"[A-Za-z0-9]", v))),
    "split": ("a non-empty split name", bool),
    "shard_size": ("a whole number of images >= 1", lambda v: re.fullmatch(_WHOLE, v) is not None and int(v) >= 1),
    "limit": ("a whole number of images >= 1", lambda v: re.fullmatch(_WHOLE, v) is not None and int(v) >= 1),
    "seed": ("a whole number >= 0", lambda v: re.fullmatch(_WHOLE, v) is not None),
}
_COLUMNS = {
    "image": ("a column name", bool),
    "description": ("a column name", bool),
    "id": ("a column name", bool),
}
SOURCE_OPTIONS: dict[str, dict[str, tuple[str, Any]]] = {
    "sample": _COMMON,
    "docci": _COMMON,
    "manifest": {
        **_COMMON,
        **_COLUMNS,
        "root": ("a folder", bool),
        "allow_urls": ("true or false", lambda v: v.lower() in _FLAG),
        "allow_symlinks": ("true or false", lambda v: v.lower() in _FLAG),
    },
    "hf": {**_COMMON, **_COLUMNS},
}


def parse_spec(spec: str) -> SourceSpec:
    """A spec checked against its source's known options, so a typo (`shardsize=3`) or a bad
    value (`shard_size=0`) is refused before anything is registered under the wrong shards."""
    head, _, query = spec.partition("?")
    kind, _, location = head.partition(":")
    if kind not in SOURCE_OPTIONS or (kind != "sample" and not location):
        raise SpecError(f"unknown caption source {spec!r}: use sample, docci:PATH, manifest:PATH or hf:NAME")
    known = SOURCE_OPTIONS[kind]
    options: dict[str, str] = {}
    for option, value in parse_qsl(query, keep_blank_values=True):
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpecError(
                f"{kind} source: unknown option {option!r}; {hint}accepted options: {', '.join(sorted(known))}"
            )
        if option in options:
            raise SpecError(f"{kind} source: option {option!r} is given twice")
        meaning, valid = known[option]
        if not valid(value):
            raise SpecError(f"{kind} source: {option}={value!r} is not valid; {option} takes {meaning}")
        options[option] = value
    return SourceSpec(kind=kind, location=location, options=options)


def read_items(spec: SourceSpec, image_root: str) -> list[ShardItem]:
    """All items of a source, sorted by image id. `image_root` receives images that a source
    holds in memory (HF image columns, the bundled sample) so every item has a file."""
    readers = {"sample": _sample, "docci": _docci, "manifest": _manifest, "hf": _hf}
    check_location(spec)
    items = list(readers[spec.kind](spec, image_root))
    items.sort(key=lambda item: item.image_id)
    limit = spec.options.get("limit")
    if limit is not None:
        # The paper's selection: a seeded shuffle of the sorted ids, then the first N.
        random.Random(int(spec.options.get("seed", 0))).shuffle(items)
        items = sorted(items[: int(limit)], key=lambda item: item.image_id)
    return mark_duplicates(items)


def check_location(spec: SourceSpec) -> None:
    """A source file or folder that is not there is the spec's mistake, said in one line."""
    needed = {
        "manifest": spec.location,
        "docci": f"{spec.location.rstrip('/')}/docci_descriptions.jsonlines",
        # an hf location that is not a hub id is a local save_to_disk folder
        "hf": spec.location if spec.location.startswith(("/", ".")) else None,
    }.get(spec.kind)
    if needed is None:
        return
    fs, path = fsspec.core.url_to_fs(needed)
    if not fs.exists(path):
        raise SpecError(f"{spec.kind} source: {needed} does not exist")


def shard(spec: SourceSpec, items: list[ShardItem]) -> dict[str, list[ShardItem]]:
    split = spec.options.get("split", items[0].split if items else "all")
    split = re.sub(r"[^A-Za-z0-9_]+", "-", split).strip("-") or "all"  # keys name files: no `/`, no `..`
    size = spec.shard_size
    return {
        f"{spec.name}-{split}-{index:05d}": items[start : start + size]
        for index, start in enumerate(range(0, len(items), size))
    }


def _bad_row(spec: SourceSpec, index: int, reason: str) -> ShardItem:
    """An item for a row we could not read; `reason` is "code: detail"."""
    return ShardItem(
        image_id=f"{spec.name}-row-{index:06d}",
        source=spec.name,
        split=spec.options.get("split", "all"),
        image_ref="",
        description="",
        error=reason,
    )


def _decode(raw: bytes) -> Any:
    """A JSON line whose bytes need not all be UTF-8: bad bytes inside a string survive as
    surrogates, so the row is still read and only that field is refused."""
    return json.loads(raw.decode("utf-8", "surrogateescape"))


def _row_item(
    spec: SourceSpec,
    index: int,
    image_id: str,
    image_ref: str,
    description: str,
    split: str,
    root: str,
    problem: str | None = None,
) -> ShardItem:
    """One readable row as an item (refused with `problem` when given); fields with bytes that
    are not UTF-8 make it a bad row."""
    for field, value in (("image id", image_id), ("image path", image_ref)):
        where = invalid_utf8(value)
        if where is not None:
            return _bad_row(spec, index, f"unreadable_row: the {field} is not valid UTF-8 ({where})")
    where = invalid_utf8(description)
    return ShardItem(
        image_id=image_id,
        source=spec.name,
        split=split,
        image_ref=image_ref,
        description=printable(description),
        error=problem or (None if where is None else f"non_utf8_description: not valid UTF-8 ({where})"),
        root=root,
    )


def _sample(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    import skimage

    skimage_data = Path(skimage.__file__).parent / "data"
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
                row = _decode(raw)
                if row["split"] != split:
                    continue
                if not isinstance(row["image_file"], str) or not isinstance(row["description"], str):
                    raise TypeError("image_file and description must be strings")
                ref, images = f"{root}/images/{row['image_file']}", f"{root}/images"
                yield _row_item(
                    spec,
                    index,
                    str(row["example_id"]),
                    ref,
                    row["description"],
                    split,
                    root=images,
                    problem=path_escape_problem(ref, images),
                )
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                yield _bad_row(spec, index, f"unreadable_row: {type(error).__name__}: {error}")


def _manifest(spec: SourceSpec, image_root: str) -> Iterator[ShardItem]:
    """Image paths are relative to the manifest (or absolute) and must stay inside its folder,
    or inside `root=` when given, also once symlinks are resolved (unless `allow_symlinks=true`,
    for a folder of links into another disk); URLs are refused unless `allow_urls=true`."""
    location = spec.location
    folder = location.rsplit("/", 1)[0] if "/" in location else "."
    root = spec.options.get("root", folder)
    allow_urls = spec.options.get("allow_urls", "false").lower() in {"1", "true", "yes"}
    allow_symlinks = spec.options.get("allow_symlinks", "false").lower() in {"1", "true", "yes"}
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
            yield _bad_row(spec, index, f"unreadable_row: row lacks string fields {image_key!r} and {text_key!r}")
            continue
        image_id = str(row.get(id_key) or Path(image).stem)
        if is_url(image):
            refused = None if allow_urls else f"url_not_allowed: {image} (paths only; add allow_urls=true)"
            yield _row_item(spec, index, image_id, image, description, split, root="", problem=refused)
            continue
        ref = image if image.startswith("/") else f"{folder}/{image}"
        yield _row_item(
            spec,
            index,
            image_id,
            ref,
            description,
            split,
            root="" if allow_symlinks else root,
            problem=path_escape_problem(ref, root),
        )


def _manifest_rows(location: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Rows of a JSONL or Parquet manifest; an unreadable line yields its reason instead."""
    if location.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        fs, path = fsspec.core.url_to_fs(location)
        with fs.open(path, "rb") as handle:
            table = pq.read_table(io.BytesIO(handle.read()))
        # Text columns are read as bytes and decoded per row, so one value that is not UTF-8
        # refuses its row, not the file (polars would reject the whole file).
        columns = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                columns[name] = [
                    None if v is None else v.decode("utf-8", "surrogateescape")
                    for v in column.cast(pa.large_binary()).to_pylist()
                ]
            else:
                columns[name] = column.to_pylist()
        for index in range(table.num_rows):
            yield index, {name: values[index] for name, values in columns.items()}
        return
    with fsspec.open(location, "rb") as handle:
        for index, raw in enumerate(handle):
            if not raw.strip():
                continue
            try:
                row = _decode(raw)
            except json.JSONDecodeError as error:
                yield index, f"unreadable_row: line {index + 1} is not JSON: {error}"
                continue
            yield index, row if isinstance(row, dict) else f"unreadable_row: line {index + 1} is not a JSON object"


def _file_name(image_id: str) -> str:
    """A file name for an id: the id itself when it is plain, else a cleaned form plus a hash,
    so "a/b" and "a_b" never share a file and no id can name a path outside the folder."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)[:100].lstrip(".")
    if clean == image_id:
        return clean
    return f"{clean}-{hashlib.sha256(image_id.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


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
    for index, row in enumerate(cast("datasets.Dataset", dataset)):
        row = cast(dict[str, Any], row)
        image_id = str(row[id_key]) if id_key else f"{spec.name}-{index:07d}"
        image = row.get(image_key)
        description = row.get(text_key)
        if isinstance(image, str):
            ref = image
        elif image is not None and hasattr(image, "save"):
            ref = f"{folder}/{_file_name(image_id)}.png"
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
        yield ShardItem(image_id=image_id, source=spec.name, split=split, image_ref=ref, description=description)
