"""The three generation stages. Each run streams the requests of all its shards through one
engine (single-run backfills: one model load), shard after shard, and writes each shard's tables
as soon as that shard's last answer is in. When its step ends, a stage gives its engine back:
parked for the next stage of the run if that stage uses the same settings, freed otherwise,
so one GPU holds one model at a time."""

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
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

from lpt.config import EngineSettings, PipelineConfig
from lpt.parse import mcq_json_schema
from lpt.prompts import ask_prompt, think_answer_regex, think_prompt
from lpt.records import Caption, LongCot, PresentedMCQ, Quarantined, SimpleCot
from lpt.scoring import McqScores
from lpt.stages import ContinuationPlan, long_cot, mcqs_from_response, plan_continuations, simple_cot_id
from lpt_assets.executors import gpu_op_tags
from lpt_assets.generation import Answer, GenerationRun, GenerationStats, ShardDone, to_request
from lpt_assets.metadata import (
    ShardReport,
    counts_table,
    drop_metadata,
    engine_counts,
    histogram,
    run_engine_figures,
    table,
)
from lpt_assets.partitions import shards
from lpt_assets.preflight import assets_in_run, preflight_run
from lpt_assets.versions import code_versions
from lpt_resources.engines.base import Engine, GenerationResult
from lpt_resources.engines.resource import EngineResource
from lpt_resources.storage import ParquetStore

GPU_POOL = "gpu"


def refused_by_engine(stage: str, item_id: str, result: GenerationResult) -> Quarantined:
    """A request the engine refused for its own content (too long, say): the row is kept out
    with the engine's words, and the rest of the shard goes on."""
    if result.error:
        return Quarantined(stage=stage, item_id=item_id, reason="engine_refused", detail=result.error)
    return Quarantined(stage=stage, item_id=item_id, reason="no_output", detail="the engine returned no completion")


def _read_all(store: ParquetStore, asset_name: str, keys: list[str], model):
    return {key: store.read(asset_name, key, model) for key in keys}


def _vlm_mode(engine: Engine, stand_in_allowed: bool) -> bool:
    """True when stage 2 runs on the description instead of the image (never silently)."""
    if engine.supports_images:
        return False
    if stand_in_allowed:
        return True
    raise ValueError(
        f"the vlm engine ({engine.name}: {engine.model}) cannot take images; use a VLM, or set "
        "think.caption_stand_in = true to let a text model read the description instead"
    )


def _release(context: AssetExecutionContext, engine: EngineResource, settings: EngineSettings,
             next_stage: tuple[str, EngineSettings] | None) -> None:
    """Give the stage's engine back: parked when the next stage runs in this run with the same
    settings (it picks the loaded model up), freed otherwise."""
    park = (
        next_stage is not None
        and next_stage[1] == settings
        and AssetKey(next_stage[0]) in assets_in_run(context)
    )
    engine.release(park=park)


class ShardTables:
    """Rows per shard as answers stream in, each shard's rows in the order of its work (answers
    arrive in the order they finish), written when the shard is done."""

    def __init__(self, store: ParquetStore, keys: list[str], table: str, model: type, quarantine: str,
                 order: Callable[[Any], Any] | None = None) -> None:
        self._store, self._table, self._model, self._quarantine = store, table, model, quarantine
        self._order = order  # rows of one work item, in this order
        self.rows: dict[str, dict[int, list]] = {key: defaultdict(list) for key in keys}
        self.refused: dict[str, list[Quarantined]] = {key: [] for key in keys}
        self.written: dict[str, list] = {}
        self.engine: dict[str, GenerationStats] = {}  # each streamed shard's own use of the engine

    def add(self, shard: str, position: int, rows: list) -> None:
        self.rows[shard][position] += rows

    def write(self, shard: str) -> None:
        ordered = [
            row
            for _, rows in sorted(self.rows.pop(shard).items())
            for row in (sorted(rows, key=self._order) if self._order else rows)
        ]
        self._store.write(self._table, shard, ordered, self._model)
        self._store.write(self._quarantine, shard, self.refused[shard], Quarantined)
        self.written[shard] = ordered

    def write_empty(self, keys: list[str], work: dict[str, int]) -> None:
        """Shards with no work at all never stream: their (empty) tables are written now."""
        for key in keys:
            if not work[key]:
                self.write(key)

    def events(self, run: GenerationRun) -> Iterator[Answer]:
        """The run's answers; each finished shard is written on the way."""
        for event in run:
            if isinstance(event, ShardDone):
                self.engine[event.shard] = event.stats
                if not event.failed:
                    self.write(event.shard)
            else:
                yield event

    def figures(self, shard: str) -> dict[str, Any]:
        """What every stage reports of a shard: rows written, rows refused and why, engine use."""
        return {
            "rows_out": len(self.written[shard]),
            **drop_metadata(self.refused[shard]),
            **engine_counts(self.engine.get(shard, GenerationStats())),
        }


def build_generation_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    versions = code_versions(config)
    engines = config.engines

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=versions["mcqs"],
        group_name="generate",
        deps=["captions", "usable_captions"],  # skipped where no shard of the run has a caption
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def mcqs(context: AssetExecutionContext, store: ParquetStore, ask_engine: EngineResource) -> MaterializeResult:
        """Four-option questions that need a close look at the image, validated and presented."""
        preflight_run(context, engines)
        keys = context.partition_keys
        by_shard = _read_all(store, "captions", keys, Caption)
        schema = mcq_json_schema(config.ask.questions_per_image) if config.ask.structured_output else None
        tables = ShardTables(store, keys, "mcqs", PresentedMCQ, "mcqs_quarantine")
        tables.write_empty(keys, {key: len(by_shard[key]) for key in keys})
        work = (
            (key, to_request(ask_prompt(caption, config.ask), config.ask.sampling, json_schema=schema), (position, caption))
            for key in keys
            for position, caption in enumerate(by_shard[key])
        )
        run = GenerationRun(ask_engine, work, stage="mcqs", cache_base=store.base,
                            total=sum(map(len, by_shard.values())), report=context.log.info)
        try:
            for answer in tables.events(run):
                position, caption = answer.context
                result = answer.result
                if result.error or not result.completions:
                    tables.refused[answer.shard].append(refused_by_engine("mcqs", caption.image_id, result))
                    continue
                completion = result.completions[0]
                items, refused = mcqs_from_response(caption, completion.text, completion.finish_reason, config.ask)
                tables.add(answer.shard, position, items)
                tables.refused[answer.shard] += refused
        finally:
            _release(context, ask_engine, engines.ask, ("simple_cots", engines.vlm))
        report = ShardReport(context)
        for key in keys:
            made = tables.written[key]
            report.add(key, {
                "rows_in": len(by_shard[key]),
                **tables.figures(key),
                "mcqs_per_image": round(len(made) / max(len(by_shard[key]), 1), 2),
                "reasoning_types": counts_table(Counter(i.mcq.reasoning_type for i in made), "reasoning_type"),
                "sample_rows": table(
                    [{"question": i.mcq.question, "options": " / ".join(i.mcq.options), "answer": i.mcq.answer} for i in made]
                ),
            })
        return report.result(run_wide={**run_engine_figures(run.stats), "engine": MetadataValue.json(ask_engine.describe())})

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=versions["simple_cots"],
        group_name="generate",
        deps=[mcqs],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def simple_cots(context: AssetExecutionContext, store: ParquetStore, vlm_engine: EngineResource) -> MaterializeResult:
        """Short CoTs from the VLM, several per presented MCQ, with finish reasons."""
        preflight_run(context, engines)
        keys = context.partition_keys
        captions = {c.image_id: c for cs in _read_all(store, "captions", keys, Caption).values() for c in cs}
        items_by_shard = _read_all(store, "mcqs", keys, PresentedMCQ)
        stand_in = _vlm_mode(vlm_engine.get(), config.think.caption_stand_in)
        think = config.think
        banned = config.verify.leak_words if stand_in and think.ban_leak_words_in_stand_in else ()
        tables = ShardTables(store, keys, "simple_cots", SimpleCot, "simple_cots_quarantine")
        tables.write_empty(keys, {key: len(items_by_shard[key]) for key in keys})
        work = (
            (
                key,
                to_request(
                    think_prompt(item, captions[item.mcq.image_id], stand_in=stand_in),
                    think.sampling,
                    image_max_side=think.image_max_side,
                    regex=think_answer_regex(think.sampling.max_tokens, item.presentation) if think.constrain_format else None,
                    banned_words=banned,
                ),
                (position, item),
            )
            for key in keys
            for position, item in enumerate(items_by_shard[key])
        )
        run = GenerationRun(vlm_engine, work, stage="simple_cots", cache_base=store.base,
                            total=sum(map(len, items_by_shard.values())), report=context.log.info)
        try:
            for answer in tables.events(run):
                position, item = answer.context
                result = answer.result
                if result.error or not result.completions:
                    tables.refused[answer.shard].append(refused_by_engine("simple_cots", item.mcq.mcq_id, result))
                tables.add(answer.shard, position, [
                    SimpleCot(
                        cot_id=simple_cot_id(item.mcq.mcq_id, answer.request.request_id, index),
                        mcq_id=item.mcq.mcq_id,
                        image_id=item.mcq.image_id,
                        sample_index=index,
                        text=completion.text,
                        finish_reason=completion.finish_reason,
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=completion.completion_tokens,
                        model=vlm_engine.model,
                        stand_in=stand_in,
                    )
                    for index, completion in enumerate(result.completions)
                ])
        finally:
            # rationale_scores, when on, runs next on the same engine (long_cots waits for it)
            after = ("rationale_scores", engines.vlm) if config.scoring.enabled else ("long_cots", engines.reasoner)
            _release(context, vlm_engine, engines.vlm, after)
        report = ShardReport(context)
        for key in keys:
            cots = tables.written[key]
            report.add(key, {
                "rows_in": len(items_by_shard[key]),
                **tables.figures(key),
                "truncated": sum(c.finish_reason == "length" for c in cots),
                "sample_rows": table([{"mcq_id": c.mcq_id, "finish": c.finish_reason, "text": c.text} for c in cots]),
            })
        return report.result(run_wide={
            "perception": "caption stand-in (text model read the description, not the image)" if stand_in else "image",
            "stand_in": stand_in,
            **run_engine_figures(run.stats),
            "engine": MetadataValue.json(vlm_engine.describe()),
        })

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=versions["long_cots"],
        group_name="generate",
        # after the scores when they are on: the VLM serves both before the reasoner loads
        deps=[simple_cots, *(["rationale_scores"] if config.scoring.enabled else [])],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def long_cots(context: AssetExecutionContext, store: ParquetStore, reasoner_engine: EngineResource) -> MaterializeResult:
        """The reasoner continues each short CoT after a cue; a cut-off continuation gets one
        retry with a larger budget (joining the stream as soon as it is cut) and is kept with
        finish_reason "length" if cut again."""
        preflight_run(context, engines)
        keys = context.partition_keys
        cfg = config.think_harder
        captions = {c.image_id: c for cs in _read_all(store, "captions", keys, Caption).values() for c in cs}
        items = {i.mcq.mcq_id: i for its in _read_all(store, "mcqs", keys, PresentedMCQ).values() for i in its}
        shorts_by_shard = _read_all(store, "simple_cots", keys, SimpleCot)
        # the best-rewarded short CoTs only, when asked (the config makes sure scoring is on)
        scores = _read_all(store, "rationale_scores", keys, McqScores) if cfg.expand_top_k_by_reward else {}
        plans = {
            key: plan_continuations(items, captions, shorts_by_shard[key], cfg, config.verify, scores.get(key, ()))
            for key in keys
        }
        retry = cfg.retry_max_tokens > cfg.sampling.max_tokens
        banned = config.verify.leak_words if cfg.ban_leak_words else ()

        def request(plan: ContinuationPlan, *, n: int, max_tokens: int, salt: str = ""):
            regex = think_answer_regex(max_tokens, items[plan.cot.mcq_id].presentation) if cfg.constrain_format else None
            return to_request(plan.prompt, cfg.sampling, n=n, max_tokens=max_tokens, regex=regex, banned_words=banned, salt=salt)

        def retries(answer: Answer) -> Iterator:
            """A continuation cut at the token limit is asked again, once, with a larger budget."""
            position, plan, retried_sample = answer.context
            if retried_sample is not None or not retry:
                return
            for slot, completion in enumerate(answer.result.completions):
                if completion.finish_reason == "length":
                    sample = plan.sample_indices[slot]
                    yield (request(plan, n=1, max_tokens=cfg.retry_max_tokens, salt=f"retry-{sample}"), (position, plan, sample))

        tables = ShardTables(store, keys, "long_cots", LongCot, "long_cots_quarantine", order=lambda row: row.sample_index)
        tables.write_empty(keys, {key: len(plans[key]) for key in keys})
        work = (
            (key, request(plan, n=len(plan.sample_indices), max_tokens=cfg.sampling.max_tokens), (position, plan, None))
            for key in keys
            for position, plan in enumerate(plans[key])
        )
        run = GenerationRun(reasoner_engine, work, stage="long_cots", cache_base=store.base, follow_up=retries,
                            total=sum(map(len, plans.values())), report=context.log.info)
        try:
            for answer in tables.events(run):
                position, plan, retried_sample = answer.context
                result = answer.result
                made = dict(prompt_tokens=result.prompt_tokens, model=reasoner_engine.model)
                if retried_sample is not None:
                    completion = result.completions[0] if result.completions else None
                    tables.add(answer.shard, position, [long_cot(
                        plan, retried_sample, completion.text if completion else "",
                        completion.finish_reason if completion else "error", attempts=2,
                        completion_tokens=completion.completion_tokens if completion else 0, **made,
                    )])
                    continue
                if result.error or not result.completions:
                    tables.refused[answer.shard].append(refused_by_engine("long_cots", plan.cot.cot_id, result))
                tables.add(answer.shard, position, [
                    long_cot(plan, sample, completion.text, completion.finish_reason, attempts=1,
                             completion_tokens=completion.completion_tokens, **made)
                    for sample, completion in zip(plan.sample_indices, result.completions)
                    if not (retry and completion.finish_reason == "length")
                ])
        finally:
            # the judge, when on and left to the reasoner's settings, picks the loaded model up
            _release(context, reasoner_engine, engines.reasoner, ("judge_verdicts", engines.judge) if config.judge.enabled else None)
        report = ShardReport(context)
        for key in keys:
            rows = tables.written[key]
            report.add(key, {
                "rows_in": len({p.cot.cot_id for p in plans[key]}),
                **tables.figures(key),
                "retried_truncated": sum(r.attempts == 2 for r in rows),
                "still_truncated": sum(r.finish_reason == "length" for r in rows),
                "mean_continuation_tokens": round(sum(r.completion_tokens for r in rows) / max(len(rows), 1), 1),
                "continuation_tokens": histogram([r.completion_tokens for r in rows], "continuation tokens"),
                "cues": counts_table(Counter(r.cue for r in rows), "cue"),
                "sample_rows": table([{"cot_id": r.cot_id, "cue": r.cue, "continuation": r.continuation} for r in rows]),
            })
        top_k = {"expand_top_k_by_reward": cfg.expand_top_k_by_reward} if cfg.expand_top_k_by_reward else {}
        return report.result(run_wide={**run_engine_figures(run.stats), **top_k,
                                       "engine": MetadataValue.json(reasoner_engine.describe())})

    return [mcqs, simple_cots, long_cots]
