"""The code location's assets, jobs and resources, built from one pipeline config given as an
argument: importing this reads no config (the CLI builds from the file it was given)."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import AssetKey, AssetsDefinition, AssetSelection, AssetSpec, Definitions, define_asset_job

from lpt.config import PipelineConfig
from lpt.tables import (
    CAPTIONS,
    DPO_PAIRS,
    JUDGE_VERDICTS,
    LONG_COTS,
    MCQS,
    QUARANTINES,
    RATIONALE_SCORES,
    SFT_SAMPLES,
    SIMPLE_COTS,
    VERIFIED,
)
from lpt_assets.assets.curate import build_curation_assets
from lpt_assets.assets.exports import build_export_assets
from lpt_assets.assets.generate import build_engine_stage_assets
from lpt_assets.assets.ingest import captions, usable_captions
from lpt_assets.checks import build_check_sensors, build_checks
from lpt_assets.executors import executor_from_env
from lpt_assets.export_automation import build_exports_sensor
from lpt_assets.partitions import shards
from lpt_assets.preflight import ROLE_OF_ASSET
from lpt_assets.registry import SHARD_MANIFEST
from lpt_assets.schedules import build_backfill_schedule
from lpt_assets.sensors import build_caption_sensor
from lpt_resources.engines.resource import engine_resource
from lpt_resources.storage import ParquetStore

PIPELINE_JOB = "lpt_pipeline"
EXPORT_JOB = "lpt_exports"


def stage_jobs(config: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """One job per stage, e.g. `lpt job execute -w workspace.yaml -j think_harder --partition KEY`:
    `score` where scoring is on; where the judge is on, `curate` judges before it selects (SFT
    and DPO read the verdicts)."""
    return {
        "ingest": (CAPTIONS.name, usable_captions.key.to_user_string()),
        "ask": (MCQS.name,),
        "think": (SIMPLE_COTS.name,),
        **({"score": (RATIONALE_SCORES.name,)} if config.scoring.enabled else {}),
        "think_harder": (LONG_COTS.name,),
        "curate": (
            VERIFIED.name,
            *((JUDGE_VERDICTS.name,) if config.judge.enabled else ()),
            SFT_SAMPLES.name,
            DPO_PAIRS.name,
        ),
    }


def stage_roles(config: PipelineConfig) -> dict[str, list[str]]:
    """The engine roles each stage job uses (checked before it runs), from its assets' roles."""
    return {
        job: sorted({ROLE_OF_ASSET[a] for a in assets if a in ROLE_OF_ASSET})
        for job, assets in stage_jobs(config).items()
    }


def table_specs(producers: Sequence[AssetsDefinition]) -> list[AssetSpec]:
    """Tables no asset returns, so the catalog lists them too. They are not executable: each
    quarantine is recorded per shard by the asset that writes it (its producer, whose group it
    joins); the shard manifest is written by `lpt register`, which records nothing (registration
    costs the same per shard as before), and no asset depends on it (a new dependency of
    `captions` would mark every shard already made stale)."""
    groups = {key: group for producer in producers for key, group in producer.group_names_by_key.items()}
    quarantines = [
        AssetSpec(
            quarantine.name,
            deps=[table.name],
            partitions_def=shards,
            group_name=groups[AssetKey(table.name)],
            description=quarantine.description,
            kinds={"parquet"},
            metadata={"table": quarantine.name},
        )
        for table, quarantine in QUARANTINES.items()
        if AssetKey(table.name) in groups
    ]
    manifest = AssetSpec(
        SHARD_MANIFEST.name,
        partitions_def=shards,
        group_name=groups[AssetKey(CAPTIONS.name)],
        description=SHARD_MANIFEST.description,
        kinds={"parquet"},
        metadata={"table": SHARD_MANIFEST.name},
    )
    return [manifest, *quarantines]


def build_definitions(config: PipelineConfig) -> Definitions:
    partitioned = [
        captions,
        usable_captions,
        *build_engine_stage_assets(config),
        *build_curation_assets(config),
    ]
    exports = build_export_assets(config)
    pipeline = define_asset_job(
        PIPELINE_JOB,
        selection=AssetSelection.assets(*partitioned),
        description="Every per-shard stage, captions to SFT samples and DPO pairs.",
    )
    export = define_asset_job(
        EXPORT_JOB,
        selection=AssetSelection.assets(*exports),
        description="LLaMA-Factory, LaCoT and Hugging Face exports of every finished shard.",
    )
    per_stage = [
        define_asset_job(
            name, selection=AssetSelection.assets(*assets), description=f"Stage {name}: {', '.join(assets)}."
        )
        for name, assets in stage_jobs(config).items()
    ]
    return Definitions(
        assets=[*partitioned, *exports, *table_specs(partitioned)],
        asset_checks=build_checks(config),  # blocking, per shard; jobs selecting an asset run its checks
        jobs=[pipeline, export, *per_stage],
        sensors=[
            build_caption_sensor(config.automation, PIPELINE_JOB),
            build_exports_sensor(config.automation, EXPORT_JOB),
            *build_check_sensors(config, [pipeline, *per_stage]),
        ],
        schedules=[build_backfill_schedule(config.automation, PIPELINE_JOB)],
        # Every job and ad-hoc run: in-process by default (one engine load serves every stage
        # and shard of a run); LPT_EXECUTOR=celery|k8s ships steps to workers (README, Cluster).
        executor=executor_from_env(),
        resources={
            "store": ParquetStore(base=config.storage),
            "ask_engine": engine_resource(config.engines.ask),
            "vlm_engine": engine_resource(config.engines.vlm),
            "reasoner_engine": engine_resource(config.engines.reasoner),
            **({"judge_engine": engine_resource(config.engines.judge)} if config.judge.enabled else {}),
        },
    )
