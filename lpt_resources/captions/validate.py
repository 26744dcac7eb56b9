"""Checks every registered item before any model sees it; bad ones go to quarantine with a reason.

The rules are plain functions over values (ids, texts, paths; the sources apply the path rules
as they read, where the spec's options are known); only `check_shard` touches the file system
(the image itself, and where a symlink really points). Every refusal is one
`Quarantined` row whose `reason` is a stable code (the README lists them) and whose `detail`
says what exactly was wrong, so the rest of the shard goes on.
"""

from __future__ import annotations

import os
import posixpath
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import fsspec
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from lpt.markup import chat_markup
from lpt.records import Caption, Quarantined

if TYPE_CHECKING:  # sources.py imports the rules below; the type is only named here
    from lpt_resources.captions.sources import ShardItem

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CaptionLimits(BaseModel):
    model_config = ConfigDict(frozen=True)
    min_side: int = 28  # smaller than one vision patch grid cell is useless to a VLM
    max_pixels: int = 60_000_000  # guards against decompression bombs
    max_bytes: int = 64 * 1024 * 1024
    min_description_words: int = 5
    max_description_chars: int = 20_000  # DOCCI's longest is about 5,000
    max_description_words: int = 3_000
    max_image_id_chars: int = 200  # ids name files (HF images) and must stay well under NAME_MAX


def is_url(reference: str) -> bool:
    """True for anything that names a scheme (`http:`, `s3:`, `file:`, `data:`, …)."""
    return bool(_SCHEME.match(reference))


def invalid_utf8(value: str) -> str | None:
    """Where a decoded value holds bytes that were not UTF-8 (kept as surrogates), if anywhere."""
    for position, char in enumerate(value):
        if "\ud800" <= char <= "\udfff":
            byte = f"byte 0x{ord(char) - 0xDC00:02x}" if char >= "\udc80" else "a lone surrogate"
            return f"{byte} at character {position}"
    return None


def printable(value: str) -> str:
    """A value that may hold undecodable bytes, made safe to store and show."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


DEFAULT_LIMITS = CaptionLimits()


def image_id_problem(image_id: str, limits: CaptionLimits) -> str | None:
    """Ids become file names and path parts downstream: refuse any that could not be one."""
    if not image_id.strip():
        return "unsafe_image_id: the image id is empty"
    if len(image_id) > limits.max_image_id_chars:
        return f"unsafe_image_id: {len(image_id)} characters (limit {limits.max_image_id_chars})"
    if image_id in {".", ".."} or "/" in image_id or "\\" in image_id:
        return f"unsafe_image_id: {image_id!r} is or contains a path part"
    if _CONTROL.search(image_id):
        return f"unsafe_image_id: {image_id!r} contains a control character"
    return None


def description_problem(description: str, limits: CaptionLimits) -> str | None:
    if not description:
        return "empty_description: the description is empty"
    text = description.strip()
    if not text:
        return "blank_description: the description is only whitespace"
    words = len(text.split())
    if words < limits.min_description_words:
        return f"short_description: {words} words (minimum {limits.min_description_words})"
    if len(text) > limits.max_description_chars:
        return f"long_description: {len(text)} characters (limit {limits.max_description_chars})"
    if words > limits.max_description_words:
        return f"long_description: {words} words (limit {limits.max_description_words})"
    markup = chat_markup(text)
    if markup:
        return f"chat_markup_in_description: {', '.join(markup[:5])}"
    return None


def _split_scheme(reference: str) -> tuple[str, str]:
    if "://" in reference:
        scheme, _, rest = reference.partition("://")
        return scheme.lower(), rest
    return "", os.path.abspath(reference)


def path_escape_problem(reference: str, root: str) -> str | None:
    """`reference` must name a file inside `root` once `..` parts are resolved (no file I/O)."""
    ref_scheme, ref_path = _split_scheme(reference)
    root_scheme, root_path = _split_scheme(root)
    inside = posixpath.normpath(ref_path)
    folder = posixpath.normpath(root_path)
    if ref_scheme != root_scheme or not inside.startswith(folder.rstrip("/") + "/"):
        return f"path_escapes_root: {reference} is outside {root}"
    return None


def symlink_escape_problem(reference: str, root: str) -> str | None:
    """A local file must really live inside `root`: a symlink may not lead out of it."""
    if is_url(reference) and not reference.startswith("file://"):
        return None  # object stores have no symlinks
    local = reference.removeprefix("file://")
    real, real_root = os.path.realpath(local), os.path.realpath(root.removeprefix("file://"))
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return f"symlink_escapes_root: {reference} resolves to {real}, outside {root}"
    return None


def mark_duplicates(items: Sequence[ShardItem]) -> list[ShardItem]:
    """Every repeat of an image id after its first is refused, across the whole source (shard
    boundaries included: later stages key rows by image id)."""
    first: dict[str, int] = {}
    out = []
    for index, item in enumerate(items):
        if item.error is None and item.image_id in first:
            item = item.model_copy(
                update={"error": f"duplicate_image_id: {item.image_id} already appears (item {first[item.image_id]})"}
            )
        elif item.error is None:
            first[item.image_id] = index
        out.append(item)
    return out


def check_shard(
    items: list[ShardItem], limits: CaptionLimits = DEFAULT_LIMITS
) -> tuple[list[Caption], list[Quarantined]]:
    captions: list[Caption] = []
    quarantined: list[Quarantined] = []
    for item in items:
        result = item.error or _item_problem(item, limits) or _check_image(item, limits)
        if isinstance(result, Caption):
            captions.append(result)
            continue
        code, _, detail = result.partition(": ")
        quarantined.append(Quarantined(stage="captions", item_id=item.image_id, reason=code, detail=detail))
    return captions, quarantined


def _item_problem(item: ShardItem, limits: CaptionLimits) -> str | None:
    problem = image_id_problem(item.image_id, limits) or description_problem(item.description, limits)
    if problem is None and item.root:  # again at check time: a link may change after registration
        problem = symlink_escape_problem(item.image_ref, item.root)
    return problem


def _check_image(item: ShardItem, limits: CaptionLimits) -> Caption | str:
    try:
        fs, path = fsspec.core.url_to_fs(item.image_ref)
        if not fs.exists(path):
            return f"missing_image: {item.image_ref} does not exist"
        size = fs.size(path)
        if size == 0:
            return f"empty_image: {item.image_ref} has zero bytes"
        if size > limits.max_bytes:
            return f"huge_image: {size} bytes (limit {limits.max_bytes})"
        with fs.open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
            width, height = image.size
            if width * height > limits.max_pixels:
                return f"huge_image: {width}x{height} pixels (limit {limits.max_pixels})"
            if min(width, height) < limits.min_side:
                return f"tiny_image: {width}x{height} (minimum side {limits.min_side})"
            image.load()  # decodes fully: catches truncated files that open() accepts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"huge_image: {error}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        if "truncated" in str(error).lower():
            return f"truncated_image: {item.image_ref}: {error}"
        return f"corrupt_image: {type(error).__name__}: {error}"
    return Caption(
        image_id=item.image_id,
        source=item.source,
        split=item.split,
        image_path=item.image_ref,
        description=item.description.strip(),
        width=width,
        height=height,
    )
