"""What every export format shares: row order, response splitting, image references, and a
folder on any fsspec filesystem whose files are written whole."""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lpt.records import DpoPair, PairType

ImagePaths = Literal["relative", "absolute"]

IMAGE_PLACEHOLDER = "<image>"
STATE_DIR = ".lpt"  # the exporter's own files at the export root; no consumer reads them

_RESPONSE_RE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


def filter_pairs(dpo: Iterable[DpoPair], pair_types: Collection[PairType | str] | None = None) -> list[DpoPair]:
    """The pairs whose type is in `pair_types` (all when None), in their given order."""
    if pair_types is None:
        return list(dpo)
    wanted = {PairType(t) for t in pair_types}
    return [p for p in dpo if p.pair_type in wanted]


def split_response(response: str) -> tuple[str, str]:
    """(think, answer) from `<think>\\n…\\n</think>\\n<answer>…</answer>`, both stripped."""
    match = _RESPONSE_RE.match(response)
    if match is None:
        raise ValueError("response is not '<think>…</think> <answer>…</answer>': " + repr(response[:120]))
    return match["think"].strip(), match["answer"].strip()


def sorted_unique(rows: Iterable[Any], key: str) -> list[Any]:
    """Rows sorted by their id, so the same inputs give byte-identical files; ids must be unique."""
    ordered = sorted(rows, key=lambda r: getattr(r, key))
    for before, after in zip(ordered, ordered[1:]):
        if getattr(before, key) == getattr(after, key):
            raise ValueError(f"duplicate {key} {getattr(after, key)!r} in export input")
    return ordered


def clean(text: str) -> str:
    """Our own text must not carry a stray image placeholder: trainers count them per image."""
    return text.replace(IMAGE_PLACEHOLDER, "image")


def is_url(path: str) -> bool:
    return "://" in path


def image_ref(image_path: str, base: str, mode: ImagePaths) -> str:
    """The image as an export names it. `relative`: relative to `base` (a folder path or URL)
    where both lie on one filesystem (the same bucket for URLs); otherwise, and with
    `absolute`, the absolute path or the URL itself."""
    if mode not in ("relative", "absolute"):
        raise ValueError(f"image_paths must be 'relative' or 'absolute', not {mode!r}")
    absolute = image_path if is_url(image_path) else os.path.abspath(image_path)
    if mode == "absolute":
        return absolute
    if not is_url(image_path) and not is_url(base):
        return Path(os.path.relpath(absolute, os.path.abspath(base))).as_posix()
    image, folder = urlsplit(image_path), urlsplit(base)
    if is_url(image_path) and is_url(base) and (image.scheme, image.netloc) == (folder.scheme, folder.netloc):
        return posixpath.relpath(image.path or "/", folder.path or "/")
    return absolute


def dump_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def jsonl(rows: Iterable[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def _umask_mode(base: int) -> int:
    """mkstemp creates private (0600) files; exports are for sharing, so they get the
    permissions an ordinary file would have."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


class Folder:
    """A folder on a local disk or any fsspec URL (s3://, gs://, ...). Files are written whole:
    on a local disk through a staging file beside the export and a rename (readers such as
    LLaMA-Factory list the data folders, so nothing half-written may ever sit in them); on an
    object store by one upload, which publishes the object whole or not at all."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/") or root
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def write(self, relative: str, data: bytes | str) -> str:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        target = self.path(relative)
        if not self.local:
            self.fs.pipe_file(target, payload)
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = self.path(f"{STATE_DIR}/staging")
        os.makedirs(staging, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=staging, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, _umask_mode(0o666))
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def clear_staging(self) -> None:
        staging = self.path(f"{STATE_DIR}/staging")
        if self.local and os.path.isdir(staging):
            for name in os.listdir(staging):
                Path(staging, name).unlink(missing_ok=True)

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        try:
            return self.fs.cat_file(self.path(relative))
        except FileNotFoundError:
            return None

    def remove(self, relative: str) -> bool:
        """Remove a file if it is there; whether it was."""
        path = self.path(relative)
        if not self.fs.exists(path):
            return False
        self.fs.rm_file(path)
        return True

    def names(self, relative: str) -> list[str]:
        """File names directly inside a sub-folder (none when it does not exist)."""
        try:
            entries = self.fs.ls(self.path(relative), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)
