"""Storage, response cache and exports all on `s3://`, against a real S3-compatible HTTP server on
127.0.0.1 (moto's server mode) through s3fs: a shard runs through the pipeline and the export
job, and the exports are loaded back from the bucket by their consumers' own readers."""

import json
import posixpath

import fsspec
import pytest
import yaml
from dagster import AssetKey, instance_for_test

from lpt.config import PipelineConfig
from lpt.tables import DPO_PAIRS, SFT_SAMPLES
from lpt_assets.cli import run_pipeline
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore
from tests.pipeline_model_server import PipelineModelServer, pipeline_config

pytestmark = pytest.mark.slow
BUCKET = "lpt-bucket"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on an ephemeral port; every s3fs filesystem made here talks to it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "lpt-test",
        "AWS_SECRET_ACCESS_KEY": "lpt-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_pipeline_and_exports_on_s3_load_back_from_the_bucket(s3, tmp_path, monkeypatch):
    import datasets
    from datasets import load_dataset

    # the bucket is on 127.0.0.1: `datasets` may reach it (the tests keep the hub offline)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    (tmp_path / "home").mkdir()
    with PipelineModelServer() as server, instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        local = pipeline_config(tmp_path, server)
        config = PipelineConfig.model_validate(
            {**local.model_dump(), "storage": f"s3://{BUCKET}/lpt", "exports": f"s3://{BUCKET}/exports"}
        )
        store = ParquetStore(base=config.storage)
        keys = register_source("sample?limit=2&shard_size=1", store, instance).shards
        run_pipeline(instance, config, keys)
        assert instance.get_latest_materialization_event(AssetKey("hf_dataset_export")) is not None

    assert not (tmp_path / "exports").exists() and not (tmp_path / "data").exists()  # nothing local
    assert s3.find(f"{BUCKET}/lpt/response_cache")  # the cache lives under the storage URL
    sft = [row for key in keys for row in store.read(SFT_SAMPLES, key)]
    dpo = [row for key in keys for row in store.read(DPO_PAIRS, key)]
    assert sft and dpo

    # Hugging Face: the card's configs, their globs resolved on the bucket, read by `datasets`
    card = s3.cat_file(f"{BUCKET}/exports/hf/README.md").decode()
    configs = {c["config_name"]: c for c in yaml.safe_load(card.split("---")[1])["configs"]}
    loaded = {}
    for name in ("sft", "dpo"):
        pattern = configs[name]["data_files"][0]["path"]
        loaded[name] = load_dataset(
            "parquet", data_files={"train": f"s3://{BUCKET}/exports/hf/{pattern}"}, split="train"
        )
    assert sorted(loaded["sft"]["sample_id"]) == sorted(s.sample_id for s in sft)
    assert sorted(loaded["dpo"]["pair_id"]) == sorted(p.pair_id for p in dpo)
    assert all(row["images"][0].size[0] > 0 for row in loaded["dpo"])  # bytes in the Parquet

    # LLaMA-Factory: dataset_info.json names part folders; image paths lead to the images
    base = f"{BUCKET}/exports/llamafactory"
    info = json.loads(s3.cat_file(f"{base}/dataset_info.json"))
    rows = {}
    for name, entry in info.items():
        files = s3.ls(f"{base}/{entry['file_name']}", detail=False)
        assert {posixpath.basename(f) for f in files} == {f"{key}.jsonl" for key in keys}
        rows[name] = [json.loads(line) for f in files for line in s3.cat_file(f).decode().splitlines()]
    assert (len(rows["lpt_sft"]), len(rows["lpt_dpo"])) == (len(sft), len(dpo))
    for row in rows["lpt_sft"] + rows["lpt_dpo"]:
        (image,) = row["images"]
        assert not image.startswith("/")  # relative to the export folder, in the same bucket
        assert s3.exists(posixpath.normpath(f"{base}/{image}"))

    # LaCoT and provenance: one part per shard
    lacot = [row for key in keys for row in json.loads(s3.cat_file(f"{BUCKET}/exports/lacot/{key}.json"))]
    assert sorted(r["id"] for r in lacot) == sorted(s.sample_id for s in sft)
    provenance = [
        json.loads(line)
        for key in keys
        for line in s3.cat_file(f"{BUCKET}/exports/provenance/{key}.jsonl").decode().splitlines()
    ]
    assert len(provenance) == len(sft) + len(dpo)
