"""Images for engines: read once, decoded near the size the model gets, ahead of the engine.

A JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when that still covers the target size
(PIL's draft mode), which costs a fraction of a full decode followed by a resize: a 2048x1536
photo capped at 512 pixels is decoded at 512x384 directly. Other formats are decoded whole.

`ImagePrefetcher` prepares the images of the next requests in a small thread pool (decoding
releases the GIL) while the engine runs the current ones, and keeps recent results, so the
several MCQs of one image load it once per stage run.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


def _read(location: str) -> bytes:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    with fs.open(path, "rb") as handle:
        return handle.read()


def _scaled(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    width, height = size
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode(data: bytes, max_side: int | None) -> Any:
    """An RGB PIL image, its longest side capped at `max_side` (bicubic)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    target = _scaled(image.size, max_side)
    if image.format == "JPEG" and target != image.size:
        image.draft("RGB", target)  # libjpeg scales while decoding; never below the target
    image = image.convert("RGB")
    if image.size != target:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image


def load_image(location: str, max_side: int | None) -> Any:
    """An RGB PIL image from a path or fsspec URL, its longest side capped at `max_side`."""
    return decode(_read(location), max_side)


def image_data_url(location: str, max_side: int | None) -> str:
    """The image as a data URL for an HTTP engine: the original bytes when it is a PNG or JPEG
    within the cap, else the capped image as JPEG (for JPEG sources) or PNG."""
    from PIL import Image

    data = _read(location)
    probe = Image.open(io.BytesIO(data))
    fmt = (probe.format or "").upper()
    if fmt in ("PNG", "JPEG") and _scaled(probe.size, max_side) == probe.size:
        mime = "image/png" if fmt == "PNG" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    image = decode(data, max_side)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


class ImagePrefetcher:
    """Prepared images by key, computed in a thread pool and kept for the last `keep` keys.

    `prefetch` starts work without waiting; `get` waits for it (starting it if nobody did). A
    failed preparation raises from `get`, for the request that needed it alone."""

    def __init__(self, workers: int = 4, keep: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lpt-images")
        self._futures: OrderedDict[Hashable, Future] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def prefetch(self, key: Hashable, prepare: Callable[[], T]) -> Future:
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                future = self._futures[key] = self._pool.submit(prepare)
                while len(self._futures) > self._keep:
                    self._futures.popitem(last=False)
            else:
                self._futures.move_to_end(key)
            return future

    def get(self, key: Hashable, prepare: Callable[[], T]) -> T:
        return self.prefetch(key, prepare).result()

    def for_request(
        self, location: str | None, max_side: int | None, prepare: Callable[[str, int | None], T]
    ) -> Future | None:
        """A request's image (`location` capped at `max_side`) prepared by `prepare` (load_image,
        image_data_url), started now; None for a request without one."""
        if not location:
            return None
        return self.prefetch((location, max_side), partial(prepare, location, max_side))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._futures.clear()
