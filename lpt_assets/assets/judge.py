"""The optional judge per shard (lpt/judge.py): the judge engine reads each kept long CoT and
gives a JSON verdict, through the same streaming run and response cache as generation (a rerun
sends nothing). Curation drops what the verdicts say to drop; the rest is only recorded."""

from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, MetadataValue, asset

from lpt.config import PipelineConfig
from lpt.judge import JudgeVerdict, judge_json_schema, judge_prompt, judged_traces, no_verdict, summary, verdict_from_reply
from lpt.records import LongCot, PresentedMCQ, Quarantined, Verified
from lpt_assets.assets.generate import GPU_POOL, ShardTables, _read_all, _release
from lpt_assets.executors import gpu_op_tags
from lpt_assets.generation import GenerationRun, to_request
from lpt_assets.metadata import ShardReport, counts_table, run_engine_figures, table
from lpt_assets.partitions import shards
from lpt_assets.preflight import preflight_run
from lpt_assets.versions import code_versions
from lpt_resources.engines.resource import EngineResource
from lpt_resources.storage import ParquetStore


def build_judge_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    if not config.judge.enabled:
        return []
    cfg = config.judge

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=code_versions(config)["judge_verdicts"],
        group_name="curate",
        deps=["verified"],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def judge_verdicts(context: AssetExecutionContext, store: ParquetStore, judge_engine: EngineResource) -> MaterializeResult:
        """The judge's verdict on each kept long CoT: is its added reflection consistent with its
        final answer, does it refer to its setup; which findings drop the trace (`judge.drop`)
        and which are only flagged. An unreadable reply is quarantined as judge_no_verdict."""
        preflight_run(context, config.engines)
        keys = context.partition_keys
        items = {i.mcq.mcq_id: i for its in _read_all(store, "mcqs", keys, PresentedMCQ).values() for i in its}
        longs = {c.long_id: c for cs in _read_all(store, "long_cots", keys, LongCot).values() for c in cs}
        judged = {key: judged_traces(rows) for key, rows in _read_all(store, "verified", keys, Verified).items()}
        traces = {key: [r for r in rows if r.mcq_id in items and r.trace_id in longs] for key, rows in judged.items()}
        missing = {key: [r for r in rows if r.mcq_id not in items or r.trace_id not in longs] for key, rows in judged.items()}
        schema = judge_json_schema() if cfg.structured_output else None
        tables = ShardTables(store, keys, "judge_verdicts", JudgeVerdict, "judge_verdicts_quarantine")

        def record(shard: str, position: int, verdict: JudgeVerdict) -> None:
            if verdict.error:
                tables.refused[shard].append(
                    Quarantined(stage="judge_verdicts", item_id=verdict.trace_id, reason=verdict.error, detail=verdict.reason)
                )
            tables.add(shard, position, [verdict])

        for key in keys:  # a trace whose MCQ or long CoT is no longer stored cannot be shown to the judge
            for position, row in enumerate(missing[key]):
                record(key, len(traces[key]) + position, no_verdict(row, "judge_missing_input", "its MCQ or long CoT is not stored", cfg))
        tables.write_empty(keys, {key: len(traces[key]) for key in keys})
        work = (
            (key, to_request(judge_prompt(items[row.mcq_id], longs[row.trace_id], row), cfg.sampling, json_schema=schema), (position, row))
            for key in keys
            for position, row in enumerate(traces[key])
        )
        run = GenerationRun(judge_engine, work, stage="judge_verdicts", cache_base=store.base,
                            total=sum(map(len, traces.values())), report=context.log.info)
        try:
            for answer in tables.events(run):
                position, row = answer.context
                result = answer.result
                if result.error or not result.completions:
                    verdict = no_verdict(row, "engine_refused", result.error or "the engine returned no completion", cfg)
                else:
                    completion = result.completions[0]
                    verdict = verdict_from_reply(row, completion.text, completion.finish_reason, cfg)
                record(answer.shard, position, verdict)
        finally:
            _release(context, judge_engine, config.engines.judge, None)
        report = ShardReport(context)
        for key in keys:
            verdicts = tables.written[key]
            figures = summary(verdicts)
            report.add(key, {
                "rows_in": len(judged[key]),
                **tables.figures(key),
                **{name: figures[name] for name in ("judged", "consistent", "judge_inconsistent", "judge_setup_reference", "judge_no_verdict")},
                "judge_drops": counts_table(figures["dropped"], "reason"),
                "judge_flags_kept": counts_table(figures["flagged"], "finding"),
                "sample_rows": table(sorted(
                    ({"trace_id": v.trace_id, "label": v.label, "findings": ", ".join(v.findings) or "none",
                      "dropped": v.drop_reason or "no", "judge": v.reason} for v in verdicts),
                    key=lambda r: r["findings"] == "none",
                )),
            })
        return report.result(run_wide={
            **run_engine_figures(run.stats),
            "drops": MetadataValue.json(list(cfg.drop)),
            "engine": MetadataValue.json(judge_engine.describe()),
        })

    return [judge_verdicts]
