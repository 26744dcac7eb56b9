"""One run over a range of three shards of different sizes: each shard's materialization
carries that shard's own counts, drop reasons and sample rows, never the range's (the pipeline
model server answers every stage over real HTTP in milliseconds)."""

import json

import pytest
from dagster import AssetKey, AssetRecordsFilter, MarkdownMetadataValue, TableMetadataValue, instance_for_test

from lpt.tables import CAPTIONS, CAPTIONS_QUARANTINE, LONG_COTS, MCQS, SIMPLE_COTS, VERIFIED
from lpt_assets.assets.curate import accuracy
from lpt_assets.cli import run_pipeline
from lpt_assets.metadata import ENGINE_COUNTS, INLINE_MARKDOWN_LIMIT
from lpt_assets.registry import register_source
from lpt_assets.summary import summarize
from lpt_resources.storage import ParquetStore
from tests.lpt_assets.drops import SAMPLE_ROWS, drop_manifest
from tests.pipeline_model_server import PipelineModelServer, pipeline_config

# shard_size=2 over ids sorted a1 a2 | b1 b2 | c1: two images; one image and one whose file is
# missing; only a missing file (no usable caption at all)
GOOD = {"a1": SAMPLE_ROWS[0], "a2": SAMPLE_ROWS[1], "b1": SAMPLE_ROWS[2]}
MISSING = ["b2", "c1"]


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    folder = root / "incoming"
    manifest = drop_manifest(folder, "trio.jsonl", [{**row, "image_id": image_id} for image_id, row in GOOD.items()])
    with manifest.open("a") as lines:
        for image_id in MISSING:
            lines.write(
                json.dumps({"image": f"images/{image_id}.png", "description": "a photo", "image_id": image_id}) + "\n"
            )
    (root / "home").mkdir()
    with PipelineModelServer() as server, instance_for_test(temp_dir=str(root / "home")) as instance:
        config = pipeline_config(root, server)
        store = ParquetStore(base=config.storage)
        keys = register_source(f"manifest:{manifest}?shard_size=2&name=trio", store, instance).shards
        assert len(keys) == 3
        run_pipeline(instance, config, keys)  # one run for the range, as sensors and schedules launch
        yield config, store, instance, keys


def _metadata(instance, asset: str, key: str) -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    return {name: value for name, value in record.asset_materialization.metadata.items()}


def _column(value: TableMetadataValue, name: str) -> list:
    return [record.data[name] for record in value.records]


def test_each_shard_counts_only_its_own_rows(three_shards) -> None:
    _, store, instance, keys = three_shards
    seen = {}
    for key in keys:
        captions = store.read(CAPTIONS, key)
        mcqs = store.read(MCQS, key)
        shorts = store.read(SIMPLE_COTS, key)
        longs = store.read(LONG_COTS, key)
        verified = store.read(VERIFIED, key)
        quarantined = store.read(CAPTIONS_QUARANTINE, key)
        meta = {
            asset: _metadata(instance, asset, key)
            for asset in ("captions", "mcqs", "simple_cots", "long_cots", "verified")
        }

        assert meta["captions"]["rows_in"].value == len(captions) + len(quarantined)
        assert meta["captions"]["rows_out"].value == len(captions)
        assert meta["captions"]["quarantined"].value == len(quarantined)
        assert meta["mcqs"]["rows_in"].value == len(captions)
        assert meta["mcqs"]["rows_out"].value == len(mcqs)
        # one request per caption, all of them this shard's
        assert meta["mcqs"]["requests_sent"].value + meta["mcqs"]["cache_hits"].value == len(captions)
        assert meta["simple_cots"]["rows_in"].value == len(mcqs)
        assert meta["simple_cots"]["rows_out"].value == len(shorts)
        assert meta["simple_cots"]["requests_sent"].value == len(mcqs)
        assert meta["long_cots"]["rows_out"].value == len(longs)
        assert meta["verified"]["rows_in"].value == len(verified)
        assert meta["verified"]["rows_out"].value == sum(v.kept for v in verified)
        assert meta["verified"]["accuracy_short"].value == accuracy(verified, "short")
        # sample rows come from this shard only
        questions = {i.mcq.question for i in mcqs}
        if mcqs:
            assert set(_column(meta["mcqs"]["sample_rows"], "question")) <= questions
            assert set(_column(meta["verified"]["sample_rows"], "question")) <= questions
        image_ids = {c.image_id for c in captions}
        if captions:
            assert set(_column(meta["captions"]["sample_rows"], "image_id")) == image_ids
        seen[key] = (len(captions), len(mcqs), len(shorts), len(verified))

    sizes = [seen[key][0] for key in keys]
    assert sizes == [2, 1, 0]
    assert seen[keys[0]][1] > seen[keys[1]][1] > seen[keys[2]][1] == 0  # MCQs follow the images
    drops = _metadata(instance, "captions", keys[2])["drop_reasons"]
    assert isinstance(drops, TableMetadataValue) and sum(_column(drops, "rows")) == 1


def test_what_the_ui_shows_inline(three_shards) -> None:
    """Headline figures are plain values, counts and samples are tables, plots are Markdown
    short enough for the UI to draw without a click; the engine and the run's seconds are
    the same on every shard of the run."""
    _, _, instance, keys = three_shards
    long_cots = _metadata(instance, "long_cots", keys[0])
    plot = long_cots["continuation_tokens"]
    assert isinstance(plot, MarkdownMetadataValue) and len(plot.value) < INLINE_MARKDOWN_LIMIT
    assert plot.value.startswith("![continuation tokens](data:image/svg+xml;base64,")
    assert long_cots["mean_continuation_tokens"].value > 0
    assert isinstance(long_cots["cues"], TableMetadataValue)
    verified = _metadata(instance, "verified", keys[0])
    assert isinstance(verified["drop_reasons"], TableMetadataValue)
    labels = verified["labels_kept"].value
    assert labels.startswith("![labels of kept traces](") and len(labels) < INLINE_MARKDOWN_LIMIT
    sample = verified["sample_rows"]
    assert [c.name for c in sample.schema.columns] == [
        "question",
        "options",
        "gold",
        "answer",
        "label",
        "kind",
        "kept",
        "reasoning",
    ]
    assert all(record.data["gold"] in "ABCD" and record.data["options"].startswith("A. ") for record in sample.records)
    runs = {
        stage: {_metadata(instance, stage, key)["run_engine_seconds"].value for key in keys}
        for stage in ("mcqs", "long_cots")
    }
    assert all(len(seconds) == 1 for seconds in runs.values()), runs


def test_summary_sums_the_shards(three_shards) -> None:
    config, store, instance, keys = three_shards
    engines = summarize(store, instance, keys, config)["engines"]
    for stage in ("mcqs", "simple_cots", "long_cots"):
        per_shard = [_metadata(instance, stage, key) for key in keys]
        for name in ENGINE_COUNTS:
            assert engines[stage][name] == sum(m[name].value for m in per_shard), (stage, name)
        assert engines[stage]["engine_seconds"] == per_shard[0]["run_engine_seconds"].value
    captions = sum(len(store.read(CAPTIONS, key)) for key in keys)
    assert engines["mcqs"]["requests_sent"] + engines["mcqs"]["cache_hits"] == captions == 3
