"""Makes the small export the consumer suites load (run with lpt's own environment): two shards
of the bundled sample through the real pipeline, every role on the deterministic model server,
and the real export job, with the text-only HF configs on. Prints what it wrote as JSON.

    .venv/bin/python -m tests.consumers.build_export OUT_DIR
"""

import json
import sys
from pathlib import Path

from dagster import instance_for_test

from lpt.tables import DPO_PAIRS, SFT_SAMPLES
from lpt_assets.cli import run_pipeline
from lpt_assets.registry import register_source
from lpt_resources.storage import ParquetStore
from tests.pipeline_model_server import PipelineModelServer, pipeline_config


def build(out: Path) -> dict:
    (out / "home").mkdir(parents=True, exist_ok=True)
    with PipelineModelServer() as server, instance_for_test(temp_dir=str(out / "home")) as instance:
        config = pipeline_config(out, server)
        config = config.model_copy(update={"export": config.export.model_copy(update={"hf_text": True})})
        store = ParquetStore(base=config.storage)
        keys = register_source("sample?limit=4&shard_size=2", store, instance).shards
        run_pipeline(instance, config, keys)
        sft = [row for key in keys for row in store.read(SFT_SAMPLES, key)]
        dpo = [row for key in keys for row in store.read(DPO_PAIRS, key)]
    return {
        "exports": config.exports,
        "shards": keys,
        "sft_rows": len(sft),
        "dpo_rows": len(dpo),
        "sft_ids": sorted(s.sample_id for s in sft),
        "pair_ids": sorted(p.pair_id for p in dpo),
    }


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
