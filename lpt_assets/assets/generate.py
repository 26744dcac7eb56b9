"""The stages that ask an engine (lpt/stages.py), each an asset from one factory. Each run
streams the requests of all its shards through one engine (single-run backfills: one model
load), shard after shard, and writes each shard's tables as soon as that shard's last answer
is in. When its step ends, a stage gives its engine back: parked for the next stage of the run
if that stage uses the same settings, freed otherwise, so one GPU holds one model at a time."""

import inspect
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from lpt.config import Engines, PipelineConfig
from lpt.records import Quarantined
from lpt.stage import Counts, Figure, Histogram, Json, Parsed, Rows, ShardOutcome, Stage
from lpt.stages import stages_on
from lpt.tables import Table
from lpt_assets.assets.ingest import quarantine_written
from lpt_assets.executors import gpu_op_tags
from lpt_assets.generation import Answer, GenerationRun, GenerationStats, Job, ShardDone, stage_run
from lpt_assets.metadata import ShardReport, counts_table, engine_counts, histogram, run_engine_figures, table
from lpt_assets.partitions import shards
from lpt_assets.preflight import assets_in_run, preflight_run
from lpt_assets.versions import code_versions
from lpt_resources.engines.resource import EngineResource
from lpt_resources.storage import ParquetStore

GPU_POOL = "gpu"


def _read_all(store: ParquetStore, table: Table[Any], keys: Sequence[str]) -> dict[str, list[Any]]:
    return {key: store.read(table, key) for key in keys}


def _release(context: AssetExecutionContext, engine: EngineResource, stage: Stage[Any, Any], engines: Engines) -> None:
    """Give the stage's engine back: parked when the stage it hands over to runs in this run
    with the same settings (it picks the loaded model up), freed otherwise."""
    after = stage.hands_over_to
    park = (
        after is not None
        and getattr(engines, after[1]) == getattr(engines, stage.role)
        and AssetKey(after[0].name) in assets_in_run(context)
    )
    engine.release(park=park)


def _metadata(figures: Mapping[str, Figure]) -> dict[str, Any]:
    """A stage's figures as the UI shows them."""

    def value(figure: Figure) -> Any:
        if isinstance(figure, Counts):
            return counts_table(figure.counts, figure.name)
        if isinstance(figure, Rows):
            return table(figure.rows)
        if isinstance(figure, Histogram):
            return histogram(figure.values, figure.title)
        if isinstance(figure, Json):
            return MetadataValue.json(figure.value)
        return figure

    return {name: value(figure) for name, figure in figures.items()}


class ShardTables:
    """A stage's rows per shard as answers stream in, collected in the order of the shard's
    work (answers arrive in the order they finish), written when the shard is done."""

    def __init__(
        self,
        store: ParquetStore,
        stage: Stage[Any, Any],
        work: dict[str, list[Any]],
        quarantined: Callable[[Table[Quarantined], str, int], None],
    ) -> None:
        self._store, self._stage, self._work, self._quarantined = store, stage, work, quarantined
        self.found: dict[str, dict[int, list[Any]]] = {key: defaultdict(list) for key in work}
        self.refused: dict[str, list[Quarantined]] = {key: [] for key in work}
        self.written: dict[str, list[Any]] = {}
        self.engine: dict[str, GenerationStats] = {}  # each streamed shard's own use of the engine

    def add(self, shard: str, position: int, parsed: Parsed[Any]) -> None:
        self.found[shard][position] += parsed.rows
        self.refused[shard] += parsed.quarantined

    def write(self, shard: str) -> None:
        stage = self._stage
        rows = stage.collect(self._work[shard], self.found.pop(shard))
        self._store.write(stage.table, shard, rows)
        if (quarantine := stage.quarantine) is not None:
            self._store.write(quarantine, shard, self.refused[shard])
            self._quarantined(quarantine, shard, len(self.refused[shard]))
        self.written[shard] = rows

    def write_empty(self) -> None:
        """Shards with no work at all never stream: their tables are written now."""
        for key, work in self._work.items():
            if not work:
                self.write(key)

    def events(self, run: GenerationRun[Job[Any]]) -> Iterator[Answer[Job[Any]]]:
        """The run's answers; each finished shard is written on the way."""
        for event in run:
            if isinstance(event, ShardDone):
                self.engine[event.shard] = event.stats
                if not event.failed:
                    self.write(event.shard)
            else:
                yield event

    def outcome(self, shard: str, settled: list[Parsed[Any]]) -> ShardOutcome[Any, Any]:
        return ShardOutcome(
            work=self._work[shard],
            settled=settled,
            rows=self.written[shard],
            quarantined=self.refused[shard],
            engine=engine_counts(self.engine.get(shard, GenerationStats())),
        )


def run_stage(
    context: AssetExecutionContext,
    stage: Stage[Any, Any],
    config: PipelineConfig,
    store: ParquetStore,
    engine: EngineResource,
) -> MaterializeResult:
    """Read the stage's inputs, stream its work through its engine, write each shard's tables
    as it completes, give the engine back, and report each shard."""
    preflight_run(context, config.engines)
    keys = context.partition_keys
    plan = stage.plan({table: _read_all(store, table, keys) for table in stage.reads}, engine)
    tables = ShardTables(
        store,
        stage,
        {key: plan.work[key] for key in keys},
        lambda table, shard, rows: quarantine_written(context, table, shard, rows),
    )
    for key in keys:  # settled without the engine: after the shard's work
        for index, parsed in enumerate(plan.settled.get(key, [])):
            tables.add(key, len(plan.work[key]) + index, parsed)
    tables.write_empty()
    run = stage_run(stage, engine, plan.work, keys, cache_base=store.base, report=context.log.info)
    try:
        for answer in tables.events(run):
            job = answer.context
            parsed = stage.answer(job.item, answer.result, job.attempt)
            if parsed.warning:
                context.log.warning(parsed.warning)
            tables.add(answer.shard, job.position, parsed)
    finally:
        _release(context, engine, stage, config.engines)
    report = ShardReport(context)
    for key in keys:
        report.add(key, _metadata(stage.figures(tables.outcome(key, plan.settled.get(key, [])))))
    run_wide = _metadata(stage.run_figures(plan, run_engine_figures(run.stats)))
    return report.result(run_wide={**run_wide, "engine": MetadataValue.json(engine.describe())})


def stage_asset(stage: Stage[Any, Any], config: PipelineConfig) -> AssetsDefinition:
    """The per-shard asset of a stage: its table, on its role's engine, in the GPU pool."""
    engine_key = f"{stage.role}_engine"

    @asset(
        name=stage.name,
        description=inspect.getdoc(stage),
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=code_versions(config)[stage.name],
        group_name=stage.group,
        deps=[dep.name if isinstance(dep, Table) else dep for dep in stage.deps],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
        required_resource_keys={"store", engine_key},
    )
    def _asset(context: AssetExecutionContext) -> MaterializeResult:
        return run_stage(context, stage, config, context.resources.store, getattr(context.resources, engine_key))

    return _asset


def build_engine_stage_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    """An asset for each engine stage the config runs (scoring and the judge where turned on)."""
    return [stage_asset(stage(config), config) for stage in stages_on(config)]
