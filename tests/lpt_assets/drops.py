"""Caption drops for the sensor, schedule and staleness tests: a small config with a watched
folder, manifests of bundled photos, and a sensor tick evaluated as the daemon does."""

import importlib.util
import json
import shutil
from pathlib import Path

from dagster import build_sensor_context

from lpt.config import PipelineConfig
from lpt_assets.sensors import SENSOR_NAME
from lpt_resources.captions.sources import SAMPLE_CAPTIONS

# Small enough for a busy 2-core machine: what comes out is not the point here, that every
# stage runs and records its code version is.
SMALL = {
    "ask": {"questions_per_image": 1, "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.95, "max_tokens": 160}},
    "think": {
        "caption_stand_in": True,
        "constrain_format": True,
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.9, "max_tokens": 32},
    },
    "think_harder": {
        "constrain_format": True,
        "retry_max_tokens": 40,
        "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.8, "top_k": 50, "max_tokens": 32},
    },
    "engines": {role: {"batch_size": 64} for role in ("ask", "vlm", "reasoner")},
}
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
SAMPLE_ROWS = [json.loads(line) for line in SAMPLE_CAPTIONS.read_text().splitlines()]


def make_config(root: Path, **automation) -> PipelineConfig:
    automation = {"watch": [str(root / "incoming")], "settle_seconds": 0, "shard_size": 1, **automation}
    return PipelineConfig.model_validate(
        {**SMALL, "storage": str(root / "data"), "exports": str(root / "exports"), "automation": automation}
    )


def drop_manifest(folder: Path, name: str, rows: list[dict]) -> Path:
    """A caption drop as a user makes it: images beside a JSONL manifest naming them."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copy(SKIMAGE_DATA / row["file_name"], folder / "images" / row["file_name"])
    path = folder / name
    lines = [
        json.dumps({"image": f"images/{r['file_name']}", "description": r["description"], "image_id": r["image_id"]})
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate_sensor(defs, instance, cursor=None):
    # as the daemon builds it: the code location's resources, and an instance ref (which lets
    # Dagster check requested shards against the registered ones)
    with build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return defs.resolve_sensor_def(SENSOR_NAME).evaluate_tick(context)
