"""Tables no asset returns are in the catalog: each quarantine beside its producer, recorded per
shard by it, and the shard manifest on its own; none of them can end up in a job."""

from dagster import AssetKey, instance_for_test, materialize

from lpt.config import load_config
from lpt.tables import QUARANTINES
from lpt_assets.assets.ingest import captions
from lpt_assets.location import build_definitions
from lpt_assets.partitions import shards
from lpt_assets.registry import SHARD_MANIFEST
from lpt_resources.captions.sources import ShardItem
from lpt_resources.storage import ParquetStore


def _judged_config():
    config = load_config()
    return config.model_copy(update={"judge": config.judge.model_copy(update={"enabled": True})})


def test_quarantines_and_the_manifest_are_listed_but_not_executable():
    for config in (load_config(), _judged_config()):
        defs = build_definitions(config)
        graph = defs.resolve_asset_graph()
        listed = {key.to_user_string() for key in graph.get_all_asset_keys()}
        for table, quarantine in QUARANTINES.items():
            if table.name not in listed:
                continue
            node, producer = graph.get(AssetKey(quarantine.name)), graph.get(AssetKey(table.name))
            assert not node.is_executable
            assert node.parent_keys == {AssetKey(table.name)}
            assert node.group_name == producer.group_name
            assert node.partitions_def == shards
        assert "judge_verdicts_quarantine" in listed or not config.judge.enabled
        manifest = graph.get(AssetKey(SHARD_MANIFEST.name))
        assert not manifest.is_executable and not manifest.parent_keys and not manifest.child_keys
        for job in defs.resolve_all_job_defs():
            assert not {AssetKey(q.name) for q in QUARANTINES.values()} & set(job.asset_layer.executable_asset_keys)


def test_captions_records_its_quarantine_per_shard(tmp_path):
    store = ParquetStore(base=str(tmp_path / "data"))
    bad = ShardItem(
        image_id="a", source="t", split="all", image_ref="/none.png", description="x", error="unreadable_row: no"
    )
    store.write(SHARD_MANIFEST, "t-all-00000", [bad])
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(shards.name, ["t-all-00000"])
        assert materialize(
            [captions], partition_key="t-all-00000", instance=instance, resources={"store": store}
        ).success
        [record] = instance.fetch_materializations(AssetKey("captions_quarantine"), limit=10).records
        assert record.partition_key == "t-all-00000"
        assert record.asset_materialization.metadata["dagster/row_count"].value == 1
