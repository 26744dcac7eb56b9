"""Training-ready exports, built from every shard that has finished."""


from collections import Counter
from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from lpt.config import PipelineConfig
from lpt.export import write_hf_datasets, write_lacot, write_llamafactory, write_provenance
from lpt.records import DpoPair, SftSample
from lpt_resources.storage import ParquetStore


def finished_rows(store: ParquetStore) -> tuple[list[str], list[SftSample], list[DpoPair]]:
    """Rows of the shards where both SFT samples and DPO pairs exist."""
    keys = sorted(set(store.partitions("sft_samples")) & set(store.partitions("dpo_pairs")))
    sft = [row for key in keys for row in store.read("sft_samples", key, SftSample)]
    dpo = [row for key in keys for row in store.read("dpo_pairs", key, DpoPair)]
    return keys, sft, dpo


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
        keys, sft, dpo = finished_rows(store)
        out = root / "llamafactory"
        written = write_llamafactory(sft, dpo, out)
        lacot = write_lacot(sft, root / "lacot")
        provenance = write_provenance(sft, dpo, out, run_info=run_info(config))
        return MaterializeResult(
            metadata={
                "shards": len(keys),
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
        keys, sft, dpo = finished_rows(store)
        info = run_info(config)
        folder = write_hf_datasets(
            sft, dpo, root / "hf", card_context={k: str(v) for k, v in info.items()}
        )
        return MaterializeResult(
            metadata={"shards": len(keys), "sft_rows": len(sft), "dpo_rows": len(dpo), "folder": MetadataValue.path(str(folder))}
        )

    return [llamafactory_export, hf_dataset_export]
