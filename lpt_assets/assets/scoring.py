"""LaCoT rationale scores per shard: the VLM scores each short CoT with each of the MCQ's four
answers, teacher-forced after the stage-2 prompt (image and question), through the same
streaming run and response cache as generation, so a rerun sends nothing."""

from collections import defaultdict

from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, MetadataValue, asset

from lpt.config import PipelineConfig
from lpt.prompts import think_prompt
from lpt.records import Caption, PresentedMCQ, SimpleCot
from lpt.scoring import McqScores, Rationale, rationales, score_mcq, summary, targets
from lpt_assets.assets.generate import GPU_POOL, _read_all, _release, _vlm_mode
from lpt_assets.executors import gpu_op_tags
from lpt_assets.generation import GenerationRun, GenerationStats, ShardDone, to_request
from lpt_assets.metadata import ShardReport, engine_counts, histogram, run_engine_figures, table
from lpt_assets.partitions import shards
from lpt_assets.preflight import preflight_run
from lpt_assets.versions import code_versions
from lpt_resources.engines.resource import EngineResource
from lpt_resources.storage import ParquetStore


def build_scoring_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    if not config.scoring.enabled:
        return []

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=code_versions(config)["rationale_scores"],
        group_name="generate",
        deps=["simple_cots"],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def rationale_scores(context: AssetExecutionContext, store: ParquetStore, vlm_engine: EngineResource) -> MaterializeResult:
        """LaCoT's likelihood matrix per MCQ (short CoT x option, mean log-probability per
        token), each rationale's reward with the gold answer, the Best-of-N answer, its margin
        over the gold one, and suspect keys."""
        preflight_run(context, config.engines)
        keys = context.partition_keys
        captions = {c.image_id: c for cs in _read_all(store, "captions", keys, Caption).values() for c in cs}
        items = _read_all(store, "mcqs", keys, PresentedMCQ)
        cots = _read_all(store, "simple_cots", keys, SimpleCot)
        stand_in = _vlm_mode(vlm_engine.get(), config.think.caption_stand_in)
        plans: dict[str, list[tuple[PresentedMCQ, list[Rationale]]]] = {}
        for key in keys:
            by_mcq: dict[str, list[SimpleCot]] = defaultdict(list)
            for cot in cots[key]:
                by_mcq[cot.mcq_id].append(cot)
            plans[key] = [(item, scored) for item in items[key] if (scored := rationales(item, by_mcq[item.mcq.mcq_id]))]

        def work():
            for key in keys:
                for position, (item, scored) in enumerate(plans[key]):
                    prompt = to_request(
                        think_prompt(item, captions[item.mcq.image_id], stand_in=stand_in),
                        config.think.sampling, n=1, max_tokens=1, image_max_side=config.think.image_max_side,
                    )
                    for cot_id, letter, text in targets(item, scored):
                        request = prompt.model_copy(update={"target": text})
                        yield key, request.model_copy(update={"request_id": request.fingerprint()[:24]}), (position, cot_id, letter)

        logprobs: dict[str, dict[tuple[int, str, str], list[float]]] = {key: {} for key in keys}
        written: dict[str, list[McqScores]] = {}
        engine_use: dict[str, GenerationStats] = {}
        margin = config.scoring.suspect_margin

        def write(key: str) -> None:
            found = logprobs.pop(key)
            by_position: dict[int, dict[tuple[str, str], list[float]]] = defaultdict(dict)
            for (position, cot_id, letter), values in found.items():
                by_position[position][(cot_id, letter)] = values
            written[key] = [
                score_mcq(item, scored, by_position[position], margin)
                for position, (item, scored) in enumerate(plans[key])
                if len(by_position[position]) == 4 * len(scored)
            ]
            store.write("rationale_scores", key, written[key], McqScores)

        for key in keys:
            if not plans[key]:
                write(key)
        total = sum(len(scored) * 4 for plan in plans.values() for _, scored in plan)
        run = GenerationRun(vlm_engine, work(), stage="rationale_scores", cache_base=store.base, total=total,
                            report=context.log.info)
        engines = config.engines
        try:
            for event in run:
                if isinstance(event, ShardDone):
                    engine_use[event.shard] = event.stats
                    if not event.failed:
                        write(event.shard)
                elif event.result.target_logprobs:
                    logprobs[event.shard][event.context] = event.result.target_logprobs
                else:  # refused (too long for the model, say): its MCQ goes unscored
                    context.log.warning("scoring request %s refused: %s", event.request.request_id, event.result.error)
        finally:
            _release(context, vlm_engine, engines.vlm, ("long_cots", engines.reasoner))
        report = ShardReport(context)
        for key in keys:
            scores = written.get(key, [])
            figures = summary(scores)
            report.add(key, {
                "rows_out": len(scores),
                **{k: v for k, v in figures.items() if k != "suspect_keys" and v is not None},
                "suspect_keys": MetadataValue.json(figures["suspect_keys"]),
                "rewards": histogram([r for s in scores for r in s.rewards], "rationale reward"),
                **engine_counts(engine_use.get(key, GenerationStats())),
                "sample_rows": table([
                    {"mcq_id": s.mcq_id, "gold": s.gold_letter, "bin": s.bin_letter, "margin": round(s.margin, 3), "suspect": s.suspect}
                    for s in scores
                ]),
            })
        return report.result(run_wide={**run_engine_figures(run.stats), "engine": MetadataValue.json(vlm_engine.describe())})

    return [rationale_scores]
