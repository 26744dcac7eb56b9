"""Training-ready exports, built from every shard that has finished."""


from collections import Counter
from pathlib import Path
from typing import NamedTuple

from dagster import AssetExecutionContext, AssetsDefinition, DagsterInstance, MaterializeResult, MetadataValue, asset

from lpt.config import PipelineConfig
from lpt.export import write_hf_datasets, write_lacot, write_llamafactory, write_provenance
from lpt.records import DpoPair, SftSample
from lpt_assets.checks import failed_checks
from lpt_resources.storage import ParquetStore


class FinishedShards(NamedTuple):
    keys: list[str]
    sft: list[SftSample]
    dpo: list[DpoPair]
    held_back: dict[str, list[str]]  # shard -> the quality checks it failed


def finished_rows(store: ParquetStore, instance: DagsterInstance) -> FinishedShards:
    """Rows of the shards where both SFT samples and DPO pairs exist, less any shard whose
    latest quality check failed: files left from an earlier run must not slip past a gate."""
    written = sorted(set(store.partitions("sft_samples")) & set(store.partitions("dpo_pairs")))
    held_back = failed_checks(instance, written)
    keys = [key for key in written if key not in held_back]
    sft = [row for key in keys for row in store.read("sft_samples", key, SftSample)]
    dpo = [row for key in keys for row in store.read("dpo_pairs", key, DpoPair)]
    return FinishedShards(keys, sft, dpo, held_back)


def run_info(config: PipelineConfig) -> dict[str, object]:
    return {
        "models": {role: settings["model"] for role, settings in config.engines.model_dump().items()},
        "config_fingerprints": {
            stage: getattr(config, stage).fingerprint()
            for stage in ("ask", "think", "think_harder", "verify", "select")
        },
        "caption_stand_in": config.think.caption_stand_in,
    }


def build_export_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    root = Path(config.exports)

    @asset(deps=["sft_samples", "dpo_pairs"], group_name="export", kinds={"json"})
    def llamafactory_export(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
        """ShareGPT JSON for LLaMA-Factory (SFT and DPO) with our own dataset_info.json, the
        LaCoT/LLaVA format, and a provenance manifest for every row."""
        keys, sft, dpo, held_back = finished_rows(store, context.instance)
        out = root / "llamafactory"
        written = write_llamafactory(sft, dpo, out)
        lacot = write_lacot(sft, root / "lacot")
        provenance = write_provenance(sft, dpo, out, run_info=run_info(config))
        return MaterializeResult(
            metadata={
                "shards": len(keys),
                "held_back_by_checks": MetadataValue.json(held_back),
                "sft_rows": len(sft),
                "dpo_rows": len(dpo),
                "pair_types": MetadataValue.json(dict(Counter(p.pair_type.value for p in dpo))),
                "folder": MetadataValue.path(str(out)),
                "files": MetadataValue.json(written.model_dump(mode="json")),
                "lacot": MetadataValue.path(str(lacot)),
                "provenance": MetadataValue.path(str(provenance)),
            }
        )

    @asset(deps=["sft_samples", "dpo_pairs"], group_name="export", kinds={"huggingface"})
    def hf_dataset_export(context: AssetExecutionContext, store: ParquetStore) -> MaterializeResult:
        """A Hugging Face `datasets` dataset on disk (SFT conversations; DPO in TRL's
        conversational preference format) with a dataset card."""
        keys, sft, dpo, held_back = finished_rows(store, context.instance)
        info = run_info(config)
        folder = write_hf_datasets(
            sft, dpo, root / "hf", card_context={k: str(v) for k, v in info.items()}
        )
        return MaterializeResult(
            metadata={"shards": len(keys), "held_back_by_checks": MetadataValue.json(held_back), "sft_rows": len(sft), "dpo_rows": len(dpo), "folder": MetadataValue.path(str(folder))}
        )

    return [llamafactory_export, hf_dataset_export]
