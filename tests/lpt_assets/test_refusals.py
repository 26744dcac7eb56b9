"""A request the engine refuses for its own content is quarantined with the engine's words;
the rest of the shard goes on through every stage (the real OpenAI engine over HTTP)."""

from dagster import AssetKey, instance_for_test

from lpt.tables import DPO_PAIRS, MCQS, SIMPLE_COTS, SIMPLE_COTS_QUARANTINE
from lpt_assets.cli import run_pipeline
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore
from tests.pipeline_model_server import PipelineModelServer, pipeline_config

REFUSED_IMAGE_TEXT = "launch pad"  # in sample-rocket's description only


def _refuse_short_cots_of_one_image(body):
    messages = body["messages"]
    short_cot = body.get("continue_final_message") and messages[-1]["content"].strip() == "<think>"
    mentions = any(REFUSED_IMAGE_TEXT in str(m["content"]) for m in messages)
    return 400 if short_cot and mentions else None


def test_refused_requests_are_quarantined_and_the_shard_goes_on(tmp_path):
    (tmp_path / "home").mkdir()
    with (
        PipelineModelServer(rule=_refuse_short_cots_of_one_image) as server,
        instance_for_test(temp_dir=str(tmp_path / "home")) as instance,
    ):
        config = pipeline_config(tmp_path, server)
        store = ParquetStore(base=config.storage)
        [key] = register_source("sample?limit=2&shard_size=2", store, instance).shards
        run_pipeline(instance, config, [key])

    mcqs = store.read(MCQS, key)
    refused_ids = {i.mcq.mcq_id for i in mcqs if i.mcq.image_id == "sample-rocket"}
    kept_ids = {i.mcq.mcq_id for i in mcqs} - refused_ids
    assert refused_ids and kept_ids
    quarantine = store.read(SIMPLE_COTS_QUARANTINE, key)
    assert {q.item_id for q in quarantine} == refused_ids
    assert {q.reason for q in quarantine} == {"engine_refused"}
    assert all("400" in q.detail for q in quarantine)
    assert {c.mcq_id for c in store.read(SIMPLE_COTS, key)} == kept_ids
    assert {p.mcq_id for p in store.read(DPO_PAIRS, key)} <= kept_ids
    event = instance.get_latest_materialization_event(AssetKey("simple_cots"))
    assert event.asset_materialization.metadata["quarantined"].value == len(refused_ids)
    assert instance.get_materialized_partitions(AssetKey("dpo_pairs")) == {key}
