"""Checks every registered item before any model sees it; bad ones go to quarantine with a reason."""

from __future__ import annotations

import warnings

import fsspec
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from lpt.records import Caption, Quarantined
from lpt_resources.captions.sources import ShardItem


class CaptionLimits(BaseModel):
    model_config = ConfigDict(frozen=True)
    min_side: int = 28  # smaller than one vision patch grid cell is useless to a VLM
    max_pixels: int = 60_000_000  # guards against decompression bombs
    max_bytes: int = 64 * 1024 * 1024
    min_description_words: int = 5
    max_description_chars: int = 20_000


def check_shard(
    items: list[ShardItem], limits: CaptionLimits = CaptionLimits()
) -> tuple[list[Caption], list[Quarantined]]:
    captions: list[Caption] = []
    quarantined: list[Quarantined] = []
    seen: set[str] = set()
    for item in items:
        reason = _item_problem(item, limits, seen)
        if reason is None:
            result = _check_image(item, limits)
            if isinstance(result, Caption):
                captions.append(result)
                seen.add(item.image_id)
                continue
            reason = result
        code, _, detail = reason.partition(": ")
        quarantined.append(Quarantined(stage="captions", item_id=item.image_id, reason=code, detail=detail))
    return captions, quarantined


def _item_problem(item: ShardItem, limits: CaptionLimits, seen: set[str]) -> str | None:
    if item.error:
        return f"unreadable_row: {item.error}"
    if item.image_id in seen:
        return f"duplicate_image_id: {item.image_id} appears earlier in this shard"
    text = item.description.strip()
    if not text:
        return "empty_description: the description is empty or whitespace"
    if len(text.split()) < limits.min_description_words:
        return f"short_description: {len(text.split())} words"
    if len(text) > limits.max_description_chars:
        return f"long_description: {len(text)} characters (limit {limits.max_description_chars})"
    return None


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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"corrupt_image: {type(error).__name__}: {error}"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"huge_image: {error}"
    return Caption(
        image_id=item.image_id,
        source=item.source,
        split=item.split,
        image_path=item.image_ref,
        description=item.description.strip(),
        width=width,
        height=height,
    )
