"""The code location: assets, jobs and resources built from one pipeline config."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from lpt.config import EngineSettings, PipelineConfig, load_config
from lpt_assets.assets.curate import build_curation_assets
from lpt_assets.assets.exports import build_export_assets
from lpt_assets.assets.generate import build_generation_assets
from lpt_assets.assets.ingest import captions
from lpt_resources.engines.resource import EngineResource
from lpt_resources.storage import ParquetStore

PIPELINE_JOB = "lpt_pipeline"
EXPORT_JOB = "lpt_exports"


def engine_resource(settings: EngineSettings) -> EngineResource:
    return EngineResource(**settings.model_dump())


def build_definitions(config: PipelineConfig) -> Definitions:
    partitioned = [captions, *build_generation_assets(config), *build_curation_assets(config)]
    exports = build_export_assets(config)
    # One process per run: the engine loads once and serves every stage and shard of it.
    pipeline = define_asset_job(
        PIPELINE_JOB,
        selection=AssetSelection.assets(*partitioned),
        executor_def=in_process_executor,
        description="Every per-shard stage, captions to SFT samples and DPO pairs.",
    )
    export = define_asset_job(
        EXPORT_JOB,
        selection=AssetSelection.assets(*exports),
        executor_def=in_process_executor,
        description="LLaMA-Factory, LaCoT and Hugging Face exports of every finished shard.",
    )
    return Definitions(
        assets=[*partitioned, *exports],
        jobs=[pipeline, export],
        executor=in_process_executor,  # also for ad-hoc `dagster asset materialize` runs
        resources={
            "store": ParquetStore(base=config.storage),
            "ask_engine": engine_resource(config.engines.ask),
            "vlm_engine": engine_resource(config.engines.vlm),
            "reasoner_engine": engine_resource(config.engines.reasoner),
        },
    )


defs = build_definitions(load_config())
