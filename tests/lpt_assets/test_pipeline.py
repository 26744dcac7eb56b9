"""Every asset materialized on a temporary Dagster instance with the small real CPU model."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, instance_for_test

from lpt.config import PipelineConfig
from lpt.tables import CAPTIONS, DPO_PAIRS, LONG_COTS, MCQS, SFT_SAMPLES, SIMPLE_COTS, VERIFIED
from lpt_assets.cli import run_pipeline
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore

pytestmark = pytest.mark.slow

TINY = {
    "ask": {"questions_per_image": 3, "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.95, "max_tokens": 300}},
    "think": {
        "caption_stand_in": True,
        "constrain_format": True,
        "sampling": {"n": 4, "temperature": 0.8, "top_p": 0.9, "max_tokens": 64},
    },
    "think_harder": {
        "constrain_format": True,
        "retry_max_tokens": 96,
        "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.8, "top_k": 50, "max_tokens": 64},
    },
    "scoring": {"enabled": True},
    "engines": {role: {"batch_size": 64} for role in ("ask", "vlm", "reasoner")},
}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = PipelineConfig.model_validate({**TINY, "storage": str(root / "data"), "exports": str(root / "exports")})
    store = ParquetStore(base=config.storage)
    (root / "home").mkdir()
    with instance_for_test(temp_dir=str(root / "home")) as instance:
        registration = register_source("sample?limit=4&shard_size=2", store, instance)
        run_pipeline(instance, config, registration.shards)
        yield config, store, instance, registration.shards


def test_registration_is_idempotent(pipeline_run):
    _, store, instance, keys = pipeline_run
    again = register_source("sample?limit=4&shard_size=2", store, instance)
    assert again.shards == keys and again.added == []
    assert instance.get_dynamic_partitions("shards") == keys


def test_every_asset_materialized_for_every_shard(pipeline_run):
    config, _, instance, keys = pipeline_run
    partitioned = [
        "captions",
        "usable_captions",
        "mcqs",
        "simple_cots",
        "rationale_scores",
        "long_cots",
        "verified",
        "sft_samples",
        "dpo_pairs",
    ]
    for name in partitioned:
        done = instance.get_materialized_partitions(AssetKey(name))
        assert done == set(keys), name
    for name in ["llamafactory_export", "hf_dataset_export"]:
        assert instance.get_latest_materialization_event(AssetKey(name)) is not None
    event = instance.get_latest_materialization_event(AssetKey("simple_cots"))
    metadata = event.asset_materialization.metadata
    assert metadata["stand_in"].value is True
    assert "caption stand-in" in metadata["perception"].value


def test_dpo_pairs_trace_back_to_their_images(pipeline_run):
    config, store, _, keys = pipeline_run

    def rows(table):
        return [row for key in keys for row in store.read(table, key)]

    captions = {c.image_id: c for c in rows(CAPTIONS)}
    mcqs = {i.mcq.mcq_id: i for i in rows(MCQS)}
    shorts = {c.cot_id: c for c in rows(SIMPLE_COTS)}
    longs = {c.long_id: c for c in rows(LONG_COTS)}
    traces = {v.trace_id: v for v in rows(VERIFIED)}
    pairs = rows(DPO_PAIRS)
    assert pairs, "the run mined no DPO pairs"
    for pair in pairs:
        for trace_id in (pair.chosen_id, pair.rejected_id):
            trace = traces[trace_id]
            assert trace.kept and trace.mcq_id == pair.mcq_id
            short = shorts[trace.cot_id]
            if trace.kind == "long":
                assert longs[trace.long_id].cot_id == short.cot_id
            assert short.mcq_id == pair.mcq_id
        mcq = mcqs[pair.mcq_id]
        caption = captions[mcq.mcq.image_id]
        assert pair.image_id == caption.image_id
        assert pair.image_path == caption.image_path and Path(caption.image_path).exists()
    for sample in rows(SFT_SAMPLES):
        assert traces[sample.trace_id].kept
        assert captions[mcqs[sample.mcq_id].mcq.image_id].image_path == sample.image_path


def test_exports_name_existing_images(pipeline_run):
    config, _, _, keys = pipeline_run
    folder = Path(config.exports) / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    dpo_entry = next(entry for entry in info.values() if entry.get("ranking"))
    assert dpo_entry["file_name"] == "dpo"  # a folder of per-shard parts
    exported = 0
    for entry in info.values():
        parts = sorted((folder / entry["file_name"]).iterdir())
        assert {p.stem for p in parts} <= set(keys) and parts, entry["file_name"]
        rows = [json.loads(line) for part in parts for line in part.read_text().splitlines()]
        exported += len(rows)
        for row in rows:
            assert all((folder / image).exists() for image in row["images"])
    provenance = [
        line for part in (Path(config.exports) / "provenance").glob("*.jsonl") for line in part.read_text().splitlines()
    ]
    assert len(provenance) == exported


def _engine_metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def test_rerun_sends_nothing_and_writes_the_same_rows(pipeline_run):
    config, store, instance, keys = pipeline_run
    before = {key: store.read_frame(DPO_PAIRS, key) for key in keys}
    run_pipeline(instance, config, keys)
    for stage in ("mcqs", "simple_cots", "rationale_scores", "long_cots"):
        metadata = _engine_metadata(instance, stage)
        assert metadata["requests_sent"] == 0, stage
        assert metadata["cache_hits"] > 0, stage
    assert all(store.read_frame(DPO_PAIRS, key).equals(before[key]) for key in keys)


def test_changing_stage3_sampling_only_resends_stage3(pipeline_run):
    config, _, instance, keys = pipeline_run
    changed = config.model_copy(
        update={
            "think_harder": config.think_harder.model_copy(
                update={"sampling": config.think_harder.sampling.model_copy(update={"temperature": 0.5})}
            )
        }
    )
    run_pipeline(instance, changed, keys)
    assert _engine_metadata(instance, "mcqs")["requests_sent"] == 0
    assert _engine_metadata(instance, "simple_cots")["requests_sent"] == 0
    assert _engine_metadata(instance, "long_cots")["requests_sent"] > 0
