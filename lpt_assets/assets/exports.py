"""Training-ready exports that grow by shard: one step writes every format for the shards that
changed since the last export and rebinds the small index files (lpt/export/parts.py).

Which shards changed comes from the event log after the export's own cursor (kept with the
export, so a fresh or moved export folder is rebuilt whole); check results are read once per run
for just those shards. A shard whose latest evaluation of any check failed gets no parts, even
when files from an earlier run are still in storage."""

import time
from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Config,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from lpt.config import PipelineConfig
from lpt.export import Exporter, Funnel, ShardRows, hf, lacot, llamafactory
from lpt.export.parts import CommitResult
from lpt.tables import CAPTIONS, DPO_PAIRS, LONG_COTS, MCQS, RATIONALE_SCORES, SFT_SAMPLES, SIMPLE_COTS, VERIFIED
from lpt_assets.checks import failed_checks
from lpt_assets.export_automation import ChangeCursor, head_cursor, pending_changes
from lpt_resources.storage import ParquetStore

EXPORT_POOL = "lpt_exports"  # one export step at a time: the index files are rewritten by each
FORMATS = {
    "llamafactory_export": (
        llamafactory.FOLDER,
        {"json"},
        "ShareGPT JSON Lines for LLaMA-Factory (SFT and DPO) with our own dataset_info.json.",
    ),
    "hf_dataset_export": (
        hf.FOLDER,
        {"huggingface", "parquet"},
        "Hugging Face `datasets` Parquet (TRL formats, images embedded) with a dataset card.",
    ),
    "lacot_export": (lacot.FOLDER, {"json"}, "LaCoT/LLaVA-style rows with human / reason / gpt turns."),
}


class ExportRunConfig(Config):
    rebuild: bool = False  # re-export every finished shard (e.g. after editing the export folder by hand)


def run_info(config: PipelineConfig) -> dict[str, object]:
    return {
        "models": {role: getattr(config.engines, role).model for role in config.engine_roles()},
        "config_fingerprints": {
            stage: getattr(config, stage).fingerprint()
            for stage in (
                "ask",
                "think",
                "think_harder",
                "verify",
                *(["judge"] if config.judge.enabled else []),
                "select",
            )
        },
        "caption_stand_in": config.think.caption_stand_in,
    }


def shard_funnel(store: ParquetStore, key: str) -> Funnel:
    """The shard's rows per stage, from Parquet footers and one column of `verified`."""
    kept = store.read_frame(VERIFIED, key, columns=["kind", "kept"]) if store.exists(VERIFIED, key) else None
    kept_by_kind = (
        {kind: int(kept.filter((kept["kind"] == kind) & kept["kept"]).height) for kind in ("short", "long")}
        if kept is not None
        else {}
    )
    return Funnel(
        images=store.count(CAPTIONS, key),
        mcqs=store.count(MCQS, key),
        short_cots=store.count(SIMPLE_COTS, key),
        long_cots=store.count(LONG_COTS, key),
        kept_short=kept_by_kind.get("short", 0),
        kept_long=kept_by_kind.get("long", 0),
    )


def export_changes(
    instance: DagsterInstance, store: ParquetStore, exporter: Exporter, rebuild: bool, held_back: dict[str, list[str]]
) -> CommitResult:
    """One batch: the shards changed since the export's cursor (every shard on a rebuild), each
    written or, when its latest checks failed or its rows are gone, dropped. `held_back` gets the
    shards the checks held back."""
    state = exporter.state()
    if rebuild or state is None:  # reads every shard once: a new export folder, new settings, or asked for
        cursor = head_cursor(instance)
        batch = exporter.begin(rebuild=True)
        keys = sorted(set(store.partitions(SFT_SAMPLES)) | set(store.partitions(DPO_PAIRS)) | set(batch.known_shards()))
    else:
        changes = pending_changes(instance, ChangeCursor.model_validate(state.cursor))
        cursor, keys = changes.cursor, changes.shards
        batch = exporter.begin()
    held_back.update(failed_checks(instance, keys))  # one read of check results per run
    for key in keys:
        if key in held_back or not (store.exists(SFT_SAMPLES, key) and store.exists(DPO_PAIRS, key)):
            batch.drop(key)
            continue
        rows = ShardRows(
            shard=key,
            sft=store.read(SFT_SAMPLES, key),
            dpo=store.read(DPO_PAIRS, key),
            funnel=shard_funnel(store, key),
            scores=store.read(RATIONALE_SCORES, key) if store.exists(RATIONALE_SCORES, key) else [],
        )
        batch.put(rows)
    return batch.commit(cursor.model_dump(mode="json"))


def build_export_assets(pipeline: PipelineConfig) -> list[AssetsDefinition]:
    version = pipeline.export.fingerprint()
    specs = [
        AssetSpec(
            name,
            deps=[SFT_SAMPLES.name, DPO_PAIRS.name],
            group_name="export",
            kinds=kinds,
            description=text,
            code_version=version,
        )
        for name, (_, kinds, text) in FORMATS.items()
    ]

    @multi_asset(name="exports", specs=specs, pool=EXPORT_POOL)
    def exports(
        context: AssetExecutionContext, store: ParquetStore, config: ExportRunConfig
    ) -> Iterator[MaterializeResult]:
        """Export the shards that changed (all of them on a rebuild) and rebind the indexes."""
        started = time.perf_counter()
        exporter = Exporter(pipeline.exports, pipeline.export, run_info(pipeline))
        held_back: dict[str, list[str]] = {}
        rebuild = config.rebuild or exporter.state() is None
        result = export_changes(context.instance, store, exporter, rebuild, held_back)
        if result.state is None:  # another export committed meanwhile: count again from the parts
            context.log.warning("another export run committed while this one ran: rebuilding")
            rebuild = True
            result = export_changes(context.instance, store, exporter, rebuild, held_back)
        if result.state is None:
            raise RuntimeError("other export runs kept committing while this one rebuilt: run the export again")
        totals = result.state.totals
        context.log.info(
            f"exports {'rebuilt' if rebuild else 'updated'}: {len(result.written)} shard(s) written, "
            f"{len(result.dropped)} dropped, {totals.shards} in the export"
        )
        common = {
            "mode": "rebuild" if rebuild else "incremental",
            "shards": totals.shards,
            "shards_written": len(result.written),
            "shards_dropped": MetadataValue.json(result.dropped),
            "held_back_by_checks": MetadataValue.json({key: held_back[key] for key in sorted(held_back)}),
            "sft_rows": totals.sft_rows,
            "dpo_rows": totals.dpo_rows,
            "pair_types": MetadataValue.json(totals.dpo_by_type),
            "labels": MetadataValue.json(totals.sft_by_label),
            "seconds": round(time.perf_counter() - started, 3),
        }
        for name, (folder, _, _) in FORMATS.items():
            yield MaterializeResult(
                asset_key=name, metadata={**common, "folder": MetadataValue.path(exporter.folder.url_of(folder))}
            )

    return [exports]
