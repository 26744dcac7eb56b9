"""The three generation stages. Each run gathers the requests of all its shards (single-run
backfills: one model load), sends the engine what the response cache lacks in large batches,
then writes one table per shard."""


from collections import Counter, defaultdict

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from lpt.config import PipelineConfig
from lpt.parse import mcq_json_schema
from lpt.prompts import ask_prompt, think_answer_regex, think_prompt
from lpt.records import Caption, LongCot, PresentedMCQ, Quarantined, SimpleCot
from lpt.stages import long_cot, mcqs_from_response, plan_continuations, simple_cot_id
from lpt_assets.executors import gpu_op_tags
from lpt_assets.generation import GenerationStats, generate, to_request
from lpt_assets.metadata import drop_metadata, histogram, markdown_table, per_shard_table
from lpt_assets.partitions import shards
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


def build_generation_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    versions = code_versions(config)

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=versions["mcqs"],
        group_name="generate",
        deps=["captions"],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def mcqs(context: AssetExecutionContext, store: ParquetStore, ask_engine: EngineResource) -> MaterializeResult:
        """Four-option questions that need a close look at the image, validated and presented."""
        keys = context.partition_keys
        by_shard = _read_all(store, "captions", keys, Caption)
        captions = [c for key in keys for c in by_shard[key]]
        schema = mcq_json_schema(config.ask.questions_per_image) if config.ask.structured_output else None
        requests = [to_request(ask_prompt(c, config.ask), config.ask.sampling, json_schema=schema) for c in captions]
        results, stats = generate(ask_engine, requests, cache_base=store.base)
        out: dict[str, list[PresentedMCQ]] = defaultdict(list)
        bad: dict[str, list[Quarantined]] = defaultdict(list)
        shard_of = {c.image_id: key for key in keys for c in by_shard[key]}
        for caption, result in zip(captions, results, strict=True):
            shard = shard_of[caption.image_id]
            if result.error or not result.completions:
                bad[shard].append(refused_by_engine("mcqs", caption.image_id, result))
                continue
            completion = result.completions[0]
            items, refused = mcqs_from_response(caption, completion.text, completion.finish_reason, config.ask)
            out[shard] += items
            bad[shard] += refused
        per_shard = []
        for key in keys:
            store.write("mcqs", key, out[key], PresentedMCQ)
            store.write("mcqs_quarantine", key, bad[key], Quarantined)
            per_shard.append({"shard": key, "images": len(by_shard[key]), "mcqs": len(out[key]), "refused": len(bad[key])})
        made = [i for key in keys for i in out[key]]
        refused_all = [q for key in keys for q in bad[key]]
        return MaterializeResult(
            metadata={
                "rows_in": len(captions),
                "rows_out": len(made),
                "mcqs_per_image": round(len(made) / max(len(captions), 1), 2),
                **drop_metadata(refused_all),
                **stats.metadata(),
                "engine": MetadataValue.json(ask_engine.describe()),
                "per_shard": per_shard_table(per_shard),
                "reasoning_types": MetadataValue.json(dict(Counter(i.mcq.reasoning_type for i in made))),
                "sample_rows": markdown_table(
                    [{"question": i.mcq.question, "options": " / ".join(i.mcq.options), "answer": i.mcq.answer} for i in made]
                ),
            }
        )

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
        keys = context.partition_keys
        captions = {c.image_id: c for cs in _read_all(store, "captions", keys, Caption).values() for c in cs}
        items_by_shard = _read_all(store, "mcqs", keys, PresentedMCQ)
        stand_in = _vlm_mode(vlm_engine.get(), config.think.caption_stand_in)
        work = [(key, item) for key in keys for item in items_by_shard[key]]
        requests = [
            to_request(
                think_prompt(item, captions[item.mcq.image_id], stand_in=stand_in),
                config.think.sampling,
                image_max_side=config.think.image_max_side,
                regex=think_answer_regex(config.think.sampling.max_tokens, item.presentation) if config.think.constrain_format else None,
                banned_words=config.verify.leak_words if stand_in and config.think.ban_leak_words_in_stand_in else (),
            )
            for _, item in work
        ]
        results, stats = generate(vlm_engine, requests, cache_base=store.base)
        out: dict[str, list[SimpleCot]] = defaultdict(list)
        bad: dict[str, list[Quarantined]] = defaultdict(list)
        for (key, item), request, result in zip(work, requests, results, strict=True):
            if result.error or not result.completions:
                bad[key].append(refused_by_engine("simple_cots", item.mcq.mcq_id, result))
            for index, completion in enumerate(result.completions):
                out[key].append(
                    SimpleCot(
                        cot_id=simple_cot_id(item.mcq.mcq_id, request.request_id, index),
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
                )
        for key in keys:
            store.write("simple_cots", key, out[key], SimpleCot)
            store.write("simple_cots_quarantine", key, bad[key], Quarantined)
        cots = [c for key in keys for c in out[key]]
        return MaterializeResult(
            metadata={
                "perception": "caption stand-in (text model read the description, not the image)" if stand_in else "image",
                "stand_in": stand_in,
                "rows_in": len(work),
                "rows_out": len(cots),
                "truncated": sum(c.finish_reason == "length" for c in cots),
                **drop_metadata([q for key in keys for q in bad[key]]),
                **stats.metadata(),
                "engine": MetadataValue.json(vlm_engine.describe()),
                "per_shard": per_shard_table([{"shard": k, "mcqs": len(items_by_shard[k]), "short_cots": len(out[k])} for k in keys]),
                "sample_rows": markdown_table([{"mcq_id": c.mcq_id, "finish": c.finish_reason, "text": c.text} for c in cots]),
            }
        )

    @asset(
        partitions_def=shards,
        backfill_policy=BackfillPolicy.single_run(),
        code_version=versions["long_cots"],
        group_name="generate",
        deps=[simple_cots],
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),
        kinds={"parquet"},
    )
    def long_cots(context: AssetExecutionContext, store: ParquetStore, reasoner_engine: EngineResource) -> MaterializeResult:
        """The reasoner continues each short CoT after a cue; cut-off continuations get one
        retry with a larger budget and are kept with finish_reason "length" if cut again."""
        keys = context.partition_keys
        cfg = config.think_harder
        captions = {c.image_id: c for cs in _read_all(store, "captions", keys, Caption).values() for c in cs}
        items = {i.mcq.mcq_id: i for its in _read_all(store, "mcqs", keys, PresentedMCQ).values() for i in its}
        shorts_by_shard = _read_all(store, "simple_cots", keys, SimpleCot)
        shard_of = {c.cot_id: key for key in keys for c in shorts_by_shard[key]}
        plans = plan_continuations(items, captions, [c for k in keys for c in shorts_by_shard[k]], cfg, config.verify)
        def regex(plan, max_tokens: int) -> str | None:
            return think_answer_regex(max_tokens, items[plan.cot.mcq_id].presentation) if cfg.constrain_format else None

        banned = config.verify.leak_words if cfg.ban_leak_words else ()
        requests = [
            to_request(p.prompt, cfg.sampling, n=len(p.sample_indices), regex=regex(p, cfg.sampling.max_tokens), banned_words=banned)
            for p in plans
        ]
        results, stats = generate(reasoner_engine, requests, cache_base=store.base)
        finished: dict[tuple[int, int], LongCot] = {}
        retry_work: list[tuple[int, int]] = []
        bad: dict[str, list[Quarantined]] = defaultdict(list)
        for plan_index, (plan, result) in enumerate(zip(plans, results, strict=True)):
            if result.error or not result.completions:
                bad[shard_of[plan.cot.cot_id]].append(refused_by_engine("long_cots", plan.cot.cot_id, result))
            for slot, completion in enumerate(result.completions):
                sample_index = plan.sample_indices[slot]
                if completion.finish_reason == "length" and cfg.retry_max_tokens > cfg.sampling.max_tokens:
                    retry_work.append((plan_index, sample_index))
                    continue
                finished[(plan_index, sample_index)] = long_cot(
                    plan, sample_index, completion.text, completion.finish_reason, attempts=1,
                    prompt_tokens=result.prompt_tokens, completion_tokens=completion.completion_tokens, model=reasoner_engine.model,
                )
        retry_requests = [
            to_request(plans[p].prompt, cfg.sampling, n=1, max_tokens=cfg.retry_max_tokens, regex=regex(plans[p], cfg.retry_max_tokens), banned_words=banned, salt=f"retry-{s}")
            for p, s in retry_work
        ]
        retry_results, retry_stats = generate(reasoner_engine, retry_requests, cache_base=store.base)
        for (plan_index, sample_index), result in zip(retry_work, retry_results, strict=True):
            plan = plans[plan_index]
            completion = result.completions[0] if result.completions else None
            finished[(plan_index, sample_index)] = long_cot(
                plan, sample_index, completion.text if completion else "", completion.finish_reason if completion else "error",
                attempts=2, prompt_tokens=result.prompt_tokens,
                completion_tokens=completion.completion_tokens if completion else 0, model=reasoner_engine.model,
            )
        out: dict[str, list[LongCot]] = defaultdict(list)
        for (plan_index, _), row in sorted(finished.items()):
            out[shard_of[plans[plan_index].cot.cot_id]].append(row)
        for key in keys:
            store.write("long_cots", key, out[key], LongCot)
            store.write("long_cots_quarantine", key, bad[key], Quarantined)
        rows = [r for key in keys for r in out[key]]
        total: GenerationStats = stats.add(retry_stats)
        return MaterializeResult(
            metadata={
                "rows_in": len({p.cot.cot_id for p in plans}),
                "rows_out": len(rows),
                "retried_truncated": len(retry_work),
                "still_truncated": sum(r.finish_reason == "length" for r in rows),
                **drop_metadata([q for key in keys for q in bad[key]]),
                "cues": MetadataValue.json(dict(Counter(r.cue for r in rows))),
                "mean_continuation_tokens": round(sum(r.completion_tokens for r in rows) / max(len(rows), 1), 1),
                "continuation_tokens": histogram([r.completion_tokens for r in rows], "long-CoT continuation length", "tokens"),
                **total.metadata(),
                "engine": MetadataValue.json(reasoner_engine.describe()),
                "per_shard": per_shard_table([{"shard": k, "short_cots": len(shorts_by_shard[k]), "long_cots": len(out[k])} for k in keys]),
                "sample_rows": markdown_table([{"cot_id": r.cot_id, "cue": r.cue, "continuation": r.continuation} for r in rows]),
            }
        )

    return [mcqs, simple_cots, long_cots]
