"""Grading, filtering and tagging, then SFT selection and DPO mining, per shard."""

from collections import Counter
from typing import TypedDict

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DynamicPartitionsDefinition,
    MaterializeResult,
    asset,
)

from lpt.config import PipelineConfig
from lpt.judge import apply_verdicts
from lpt.prompts import VLM_SYSTEM, render_question
from lpt.records import LETTERS, Caption, Label, McqScores, PresentedMCQ, TrainingPrompt, Verified
from lpt.scoring import rewards_by_cot, without_suspects
from lpt.select import mine_pairs, select_sft
from lpt.tables import (
    CAPTIONS,
    DPO_PAIRS,
    JUDGE_VERDICTS,
    LONG_COTS,
    MCQS,
    RATIONALE_SCORES,
    SFT_SAMPLES,
    SIMPLE_COTS,
    VERIFIED,
)
from lpt.verify import verify_shard
from lpt_assets.metadata import ShardReport, bar_chart, counts_table, first_lines, reason_counts, table
from lpt_assets.partitions import shards
from lpt_assets.versions import code_versions
from lpt_resources.storage import ParquetStore


def accuracy(rows: list[Verified], kind: str) -> float | None:
    """Share correct among the traces of one kind that could be graded."""
    graded = [r for r in rows if r.kind == kind and r.label is not None]
    if not graded:
        return None
    correct = {"short": {Label.O}, "long": {Label.O_O, Label.X_O}}[kind]
    return round(sum(r.label in correct for r in graded) / len(graded), 4)


def sample_traces(rows: list[Verified], items: list[PresentedMCQ], limit: int = 5) -> list[dict]:
    """Graded traces as a person judges them: the question as shown, the gold answer, the
    answer given, the label and how the reasoning starts (long traces first, kept first)."""
    by_id = {i.mcq.mcq_id: i for i in items}
    chosen = sorted(rows, key=lambda r: (r.kind != "long", not r.kept))[:limit]
    return [
        {
            "question": by_id[r.mcq_id].mcq.question,
            "options": "  ".join(
                f"{letter}. {text}" for letter, text in zip(LETTERS, by_id[r.mcq_id].presentation.options)
            ),
            "gold": by_id[r.mcq_id].presentation.gold_letter,
            "answer": r.answer_raw,
            "label": r.label.value if r.label else None,
            "kind": r.kind,
            "kept": r.kept if r.kept else f"no: {r.drop_reason}",
            "reasoning": first_lines(r.think),
        }
        for r in chosen
        if r.mcq_id in by_id
    ]


def training_prompts(items: list[PresentedMCQ], captions: list[Caption]) -> dict[str, TrainingPrompt]:
    """What the trained VLM will see: always the image, never the description."""
    paths = {c.image_id: c.image_path for c in captions}
    return {
        i.mcq.mcq_id: TrainingPrompt(
            mcq_id=i.mcq.mcq_id,
            image_id=i.mcq.image_id,
            image_path=paths[i.mcq.image_id],
            system=VLM_SYSTEM,
            prompt=render_question(i),
        )
        for i in items
        if i.mcq.image_id in paths
    }


# What the three curation assets share; typed, so each decorator's call type-checks.
class _CurateAsset(TypedDict):
    partitions_def: DynamicPartitionsDefinition
    backfill_policy: BackfillPolicy
    group_name: str
    kinds: set[str]


CURATE_ASSET = _CurateAsset(
    partitions_def=shards, backfill_policy=BackfillPolicy.single_run(), group_name="curate", kinds={"parquet"}
)


def build_curation_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    versions = code_versions(config)

    @asset(name=VERIFIED.name, code_version=versions[VERIFIED.name], deps=[LONG_COTS.name], **CURATE_ASSET)
    def verified(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
        """Every short and long CoT graded strictly, labelled, filtered for leaks, truncation and
        duplicates (with the reason kept), and tagged with cognitive behaviours."""
        report = ShardReport(context)
        for key in context.partition_keys:
            items = store.read(MCQS, key)
            rows = verify_shard(items, store.read(SIMPLE_COTS, key), store.read(LONG_COTS, key), config.verify)
            store.write(VERIFIED, key, rows)
            kept = [r for r in rows if r.kept]
            labels = dict(sorted(Counter(r.label.value for r in kept if r.label).items()))
            behaviours = Counter()
            for r in kept:
                if r.kind == "long":
                    behaviours.update(r.behaviours)
            report.add(
                key,
                {
                    "rows_in": len(rows),
                    "rows_out": len(kept),
                    "accuracy_short": accuracy(rows, "short"),
                    "accuracy_long": accuracy(rows, "long"),
                    "labels_kept": bar_chart(labels, "labels of kept traces"),
                    "drop_reasons": counts_table(reason_counts(r.drop_reason for r in rows), "reason"),
                    "mean_response_tokens_kept": round(sum(r.response_tokens for r in kept) / max(len(kept), 1), 1),
                    "behaviours_in_long_cots": counts_table(dict(behaviours), "behaviour"),
                    "sample_rows": table(sample_traces(rows, items)),
                },
            )
        return report.result()

    def _scores(store: ParquetStore, key: str) -> list[McqScores]:
        return store.read(RATIONALE_SCORES, key) if store.exists(RATIONALE_SCORES, key) else []

    def _inputs(store: ParquetStore, key: str) -> tuple[list[Verified], dict[str, TrainingPrompt]]:
        """A shard's verified rows and training prompts; MCQs with a suspect key have no prompt
        (and so no samples) when the config holds them out; with the judge on, the traces its
        verdicts drop are no longer kept (their reason is the judge's)."""
        prompts = training_prompts(store.read(MCQS, key), store.read(CAPTIONS, key))
        if config.select.hold_out_suspect_keys:
            prompts = without_suspects(prompts, _scores(store, key))
        rows = store.read(VERIFIED, key)
        if config.judge.enabled:
            rows = apply_verdicts(rows, store.read(JUDGE_VERDICTS, key))
        return rows, prompts

    optional = [RATIONALE_SCORES.name] if config.scoring.enabled else []
    optional += [JUDGE_VERDICTS.name] if config.judge.enabled else []

    @asset(name=SFT_SAMPLES.name, code_version=versions[SFT_SAMPLES.name], deps=[verified, *optional], **CURATE_ASSET)
    def sft_samples(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
        """Correct short CoTs, correct extensions and self-corrections, about half X_O, with a
        length-weighted seeded subsample per MCQ."""
        report = ShardReport(context)
        for key in context.partition_keys:
            rows = select_sft(*_inputs(store, key), config.select, rewards_by_cot(_scores(store, key)))
            store.write(SFT_SAMPLES, key, rows)
            report.add(
                key,
                {
                    "rows_out": len(rows),
                    "labels": counts_table(dict(sorted(Counter(r.label.value for r in rows).items())), "label"),
                    "sample_rows": table([{"label": r.label.value, "response": r.response} for r in rows]),
                },
            )
        return report.result()

    @asset(name=DPO_PAIRS.name, code_version=versions[DPO_PAIRS.name], deps=[verified, *optional], **CURATE_ASSET)
    def dpo_pairs(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
        """Typed preference pairs per MCQ: correctness pairs and compactness pairs (O > O_O)."""
        report = ShardReport(context)
        for key in context.partition_keys:
            rows = mine_pairs(*_inputs(store, key), config.select)
            store.write(DPO_PAIRS, key, rows)
            report.add(
                key,
                {
                    "rows_out": len(rows),
                    "pair_types": bar_chart(Counter(r.pair_type.value for r in rows), "DPO pairs by type"),
                    "sample_rows": table(
                        [{"type": r.pair_type.value, "chosen": r.chosen, "rejected": r.rejected} for r in rows]
                    ),
                },
            )
        return report.result()

    return [verified, sft_samples, dpo_pairs]
