"""What a run produced, read back from storage and the instance: for `lpt demo` and people."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from lpt.config import PipelineConfig
from lpt.judge import summary as judge_summary
from lpt.records import Verified
from lpt.scoring import summary as scoring_summary
from lpt.stages import stages_on
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
    M,
    Table,
)
from lpt_assets.assets.curate import accuracy
from lpt_assets.metadata import ENGINE_COUNTS
from lpt_resources.storage import ParquetStore


def generation_stages(config: PipelineConfig) -> list[str]:
    """The engine stages this config runs, by asset name."""
    return [stage.table.name for stage in stages_on(config)]


def _rows(store: ParquetStore, table: Table[M], keys: list[str]) -> list[M]:
    return [row for key in keys if store.exists(table, key) for row in store.read(table, key)]


def _engine_stats(instance: DagsterInstance, asset: str, keys: list[str]) -> dict[str, Any]:
    """The shards' latest materializations summed: each shard counts its own requests and
    tokens; seconds are the runs' (shards share an engine), counted once per run."""
    counts = dict.fromkeys(ENGINE_COUNTS, 0)
    seconds_by_run: dict[str, float] = {}
    for key in keys:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[key]), limit=1
        ).records
        if not records or records[0].asset_materialization is None:
            continue
        metadata: dict[str, Any] = {
            name: value.value for name, value in records[0].asset_materialization.metadata.items()
        }
        for name in ENGINE_COUNTS:
            counts[name] += metadata.get(name, 0)
        seconds_by_run[records[0].run_id] = metadata.get("run_engine_seconds", 0.0)
    if not seconds_by_run:
        return {}
    seconds = round(sum(seconds_by_run.values()), 3)
    speed = round(counts["completion_tokens"] / seconds, 2) if seconds else 0.0
    return {**counts, "engine_seconds": seconds, "tokens_per_second": speed}


def summarize(
    store: ParquetStore, instance: DagsterInstance, keys: list[str], config: PipelineConfig
) -> dict[str, Any]:
    captions = _rows(store, CAPTIONS, keys)
    mcqs = _rows(store, MCQS, keys)
    shorts = _rows(store, SIMPLE_COTS, keys)
    longs = _rows(store, LONG_COTS, keys)
    verified = _rows(store, VERIFIED, keys)
    sft = _rows(store, SFT_SAMPLES, keys)
    dpo = _rows(store, DPO_PAIRS, keys)
    scores = _rows(store, RATIONALE_SCORES, keys)
    judge = judge_summary(_rows(store, JUDGE_VERDICTS, keys)) if config.judge.enabled else {}
    quarantine = {
        stage.name: dict(Counter(q.reason for q in _rows(store, QUARANTINES[stage], keys)))
        for stage in (CAPTIONS, MCQS)
    }
    exports = config.exports.rstrip("/")  # a folder or a URL (s3://…): joined as text
    return {
        "shards": keys,
        "stage2_perception": "caption stand-in (a text model read the description, not the image)"
        if any(c.stand_in for c in shorts)
        else "image",
        "rows": {
            "captions": len(captions),
            "mcqs": len(mcqs),
            "simple_cots": len(shorts),
            "long_cots": len(longs),
            "verified_kept": sum(v.kept for v in verified),
            "verified_dropped": sum(not v.kept for v in verified),
            "sft_samples": len(sft),
            "dpo_pairs": len(dpo),
        },
        "drop_reasons": {
            "captions": quarantine["captions"],
            "mcqs": quarantine["mcqs"],
            "verified": dict(Counter(v.drop_reason for v in verified if v.drop_reason)),
            **({"judge": judge["dropped"]} if judge else {}),
        },
        "accuracy": {"stage2_short": accuracy(verified, "short"), "stage3_long": accuracy(verified, "long")},
        "leak_reasons": leak_split(verified),
        "scoring": scoring_summary(scores) if scores else {},
        "judge": judge,
        "labels": dict(Counter(v.label.value for v in verified if v.kept and v.label)),
        "pairs_by_type": dict(Counter(p.pair_type.value for p in dpo)),
        "engines": {stage: _engine_stats(instance, stage, keys) for stage in generation_stages(config)},
        "exports": {
            "llamafactory": f"{exports}/llamafactory",
            "dataset_info": f"{exports}/llamafactory/dataset_info.json",
            "hf_dataset": f"{exports}/hf",
            "lacot": f"{exports}/lacot",
        },
    }


def leak_split(verified: list[Verified]) -> dict[str, int]:
    """Drops for leak words (`leak`) apart from drops for talk about the setup (`setup`); a
    long trace dropped for its short CoT's leak counts under `short_…`."""
    kinds = (
        ("short_" if r.drop_reason.startswith("short_") else "") + r.drop_reason.removeprefix("short_").split(":", 1)[0]
        for r in verified
        if r.drop_reason and r.drop_reason.removeprefix("short_").startswith(("leak:", "setup:"))
    )
    return dict(Counter(kinds))


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"shards: {', '.join(summary['shards'])}",
        f"stage 2 perception: {summary['stage2_perception']}",
        "",
        "rows per stage:",
    ]
    lines += [f"  {name:<18}{count:>8}" for name, count in summary["rows"].items()]
    lines += ["", "drop reasons:"]
    for stage, reasons in summary["drop_reasons"].items():
        for reason, count in sorted(reasons.items()):
            lines.append(f"  {stage:<10}{reason:<32}{count:>6}")
    accuracy_line = summary["accuracy"]
    lines += [
        "",
        f"accuracy: stage 2 (short) {accuracy_line['stage2_short']}, stage 3 (long) {accuracy_line['stage3_long']}",
    ]
    lines += ["leak drops: " + (", ".join(f"{k}={v}" for k, v in sorted(summary["leak_reasons"].items())) or "none")]
    scoring = summary["scoring"]
    if scoring:
        lines += [
            f"rationale scores: {scoring['rationales_scored']} rationales of {scoring['mcqs_scored']} MCQs; reward "
            f"p10/median/p90 {scoring['reward_p10']}/{scoring['reward_median']}/{scoring['reward_p90']}; "
            f"BiN accuracy vs gold {scoring['bin_accuracy']}; suspect keys {len(scoring['suspect_keys'])}"
            + (f" ({', '.join(scoring['suspect_keys'][:5])})" if scoring["suspect_keys"] else "")
        ]
    judge = summary["judge"]
    if judge:
        lines += [
            f"judge verdicts: {judge['judged']} long traces judged; consistent {judge['consistent']}, "
            f"inconsistent {judge['judge_inconsistent']}, setup reference {judge['judge_setup_reference']}, "
            f"no verdict {judge['judge_no_verdict']}; dropped "
            + (", ".join(f"{k}={v}" for k, v in judge["dropped"].items()) or "none")
            + "; flagged, kept "
            + (", ".join(f"{k}={v}" for k, v in judge["flagged"].items()) or "none")
        ]
    lines += ["labels kept: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["labels"].items()))]
    lines += ["DPO pairs by type: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["pairs_by_type"].items()))]
    lines += ["", "engines:"]
    width = max([12, *(len(stage) + 1 for stage in summary["engines"])])  # rationale_scores is 16 long
    for stage, stats in summary["engines"].items():
        lines.append(f"  {stage:<{width}}" + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lines += ["", "exports:"] + [f"  {k:<13}{v}" for k, v in summary["exports"].items()]
    return "\n".join(lines)
