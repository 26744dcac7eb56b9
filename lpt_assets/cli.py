"""`lpt`: register caption sources and run the pipeline from a shell."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import click
import typer
import yaml
from filelock import FileLock
from dagster import DagsterError, DagsterInstance
from dagster._cli.job import execute_execute_command
from dagster_shared.cli import PythonPointerOpts
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
    """The instance in $DAGSTER_HOME, or the repo's own dagster_home/ (sqlite) if unset.

    Opening a sqlite instance creates its schema on first use, and two processes doing that at
    once collide (`table run_tags already exists`, duplicate alembic heads): two `lpt` commands
    started together on a fresh home take turns here."""
    os.environ.setdefault("DAGSTER_HOME", str(REPO_DAGSTER_HOME))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(home / ".lpt-instance.lock"):
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
    # A failed run is reported by Dagster's own log and the exit status; re-raising it instead
    # would hand typer's pretty-printer a chain of Dagster frames that takes minutes to render.
    result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        raise_on_error=False,
    )
    if result.success:
        result = defs.resolve_job_def(EXPORT_JOB).execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        while error is not None and error.cause is not None:  # the user code's own error
            error = error.cause
        detail = error.message.strip() if error is not None else ""
        typer.echo(f"run {result.run_id} ({result.job_def.name}) failed: {detail}", err=True)
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


job_app = typer.Typer(no_args_is_help=True, help="Dagster jobs by workspace file and partition.")
app.add_typer(job_app, name="job")


def workspace_pointer(workspace: Path, location: str | None = None) -> PythonPointerOpts:
    """The code location a workspace file names (`python_module` or `python_file` entries), as
    the pointer Dagster's own `dagster job execute -m/-f` builds; paths resolve against the file."""
    entries = (yaml.safe_load(workspace.read_text()) or {}).get("load_from") or []
    base = workspace.resolve().parent
    found: dict[str, PythonPointerOpts] = {}
    for entry in entries:
        kind, spec = next(iter(entry.items()))
        if kind not in ("python_module", "python_file"):
            continue
        spec = {"module_name" if kind == "python_module" else "relative_path": spec} if isinstance(spec, str) else spec
        target = spec.get("module_name") or spec["relative_path"]
        working = str(base / spec.get("working_directory", "."))
        found[spec.get("location_name", target)] = PythonPointerOpts(
            module_name=spec.get("module_name"),
            python_file=str(base / spec["relative_path"]) if kind == "python_file" else None,
            working_directory=working,
            attribute=spec.get("attribute"),
        )
    if not found:
        raise typer.BadParameter(f"{workspace} names no python_module or python_file code location")
    if location is None and len(found) == 1:
        return next(iter(found.values()))
    if location not in found:
        raise typer.BadParameter(f"choose a code location with --location: {', '.join(sorted(found))}")
    return found[location]


@job_app.command("execute")
def job_execute(
    job: Annotated[str, typer.Option("-j", "--job", help="Job name, e.g. lpt_pipeline, ask, think_harder.")],
    workspace: Annotated[Path, typer.Option("-w", "--workspace", help="Workspace file.")] = Path("workspace.yaml"),
    partition: Annotated[str | None, typer.Option(help="One shard, e.g. sample-train-00000.")] = None,
    partition_range: Annotated[str | None, typer.Option(help="Shards START...END, one run.")] = None,
    location: Annotated[str | None, typer.Option("-l", "--location", help="Code location, if several.")] = None,
    tags: Annotated[str | None, typer.Option(help="Extra run tags as a JSON object.")] = None,
) -> None:
    """Run a job in this process on the instance in $DAGSTER_HOME, like `dagster job execute`,
    with the code location taken from a workspace file and the partition (or range) turned into
    Dagster's own partition tags. The code location reads its config from $LPT_CONFIG (else
    lpt.toml). Exits non-zero when the run fails."""
    if partition and partition_range:
        raise typer.BadParameter("give --partition or --partition-range, not both")
    pointer = workspace_pointer(workspace, location)
    with _instance() as instance:
        try:
            result = execute_execute_command(
                python_pointer_opts=pointer,
                instance=instance,
                job_name=job,
                tags=tags,
                partition=partition,
                partition_range=partition_range,
            )
        except click.ClickException as error:  # as Dagster's CLI reports them: a failed run, an unknown job
            typer.echo(error.format_message(), err=True)
            raise typer.Exit(1) from error
        except DagsterError as error:  # an unknown shard, a range that cannot run in one go
            typer.echo(f"{type(error).__name__}: {error}", err=True)
            raise typer.Exit(2) from error
    typer.echo(f"run {result.run_id} succeeded")


if __name__ == "__main__":
    app()
