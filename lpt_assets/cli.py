"""`lpt`: register caption sources and run the pipeline from a shell."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from dagster import DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lpt.config import PipelineConfig, load_config
from lpt_assets.definitions import EXPORT_JOB, PIPELINE_JOB, build_definitions
from lpt_assets.registry import register_source
from lpt_assets.summary import render, summarize
from lpt_resources.storage import ParquetStore

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False)

REPO_DAGSTER_HOME = Path(__file__).resolve().parent.parent / "dagster_home"
ConfigOption = Annotated[Path | None, typer.Option(help="Pipeline config (TOML); default $LPT_CONFIG or lpt.toml.")]


def _instance() -> DagsterInstance:
    """The instance in $DAGSTER_HOME, or the repo's own dagster_home/ (sqlite) if unset."""
    os.environ.setdefault("DAGSTER_HOME", str(REPO_DAGSTER_HOME))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def _config(path: Path | None) -> PipelineConfig:
    if path is not None:
        os.environ["LPT_CONFIG"] = str(path.resolve())  # so `dagster` sees the same config
    return load_config(path)


@app.command()
def register(source: str, config: ConfigOption = None) -> None:
    """Add a caption source's shards to the instance (idempotent), e.g. `sample`,
    `docci:/data/docci?split=train&limit=500`, `manifest:new.jsonl`, `hf:org/name`."""
    settings = _config(config)
    with _instance() as instance:
        result = register_source(source, ParquetStore(base=settings.storage), instance)
    typer.echo(f"{result.source}: {result.items} items in {len(result.shards)} shards, {len(result.added)} new")
    for key in result.shards:
        typer.echo(f"  {key}{'  (new)' if key in result.added else ''}")


def run_pipeline(instance: DagsterInstance, config: PipelineConfig, keys: list[str]) -> None:
    """One run for all the shards (a single engine load), then the exports."""
    defs = build_definitions(config)
    result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    if not result.success:
        raise typer.Exit(1)
    if not defs.resolve_job_def(EXPORT_JOB).execute_in_process(instance=instance).success:
        raise typer.Exit(1)


@app.command()
def demo(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    source: Annotated[str, typer.Option(help="Caption source to run on.")] = "sample",
) -> None:
    """Register the bundled sample (or another source), materialize every asset, print what
    came out. A second run sends nothing the response cache already holds."""
    settings = _config(config)
    store = ParquetStore(base=settings.storage)
    with _instance() as instance:
        registration = register_source(source, store, instance)
        run_pipeline(instance, settings, registration.shards)
        summary = summarize(store, instance, registration.shards, settings)
    typer.echo(json.dumps(summary, indent=2) if as_json else render(summary))


if __name__ == "__main__":
    app()
