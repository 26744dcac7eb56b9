"""lpt: register caption sources, check engines and run the pipeline from a shell.

Dagster, polars and the engines are imported inside the commands that use them, so `lpt --help`
and a mistyped command answer at once. A mistake the user can fix (a config key, a source
spec, a path, a missing partition, an engine that cannot work) is one line on stderr and exit
code 2; `--debug` (or LPT_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from typer.core import TyperGroup

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from lpt.config import PipelineConfig

REPO_DAGSTER_HOME = Path(__file__).resolve().parent.parent / "dagster_home"
DEBUG_ENV = "LPT_DEBUG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
INVOCATION_TAG = "lpt/invocation"  # on each run `lpt job execute` starts, to find it afterwards


class UserError(Exception):
    """A mistake in what the user typed: reported as one line, exit code 2."""


def user_error_message(error: BaseException) -> str | None:
    """The one-line report of a user's mistake, or None for anything else (a bug: traceback)."""
    if isinstance(error, UserError):
        return str(error)
    # Only modules that raised can have raised: those already imported are asked.
    known = [
        ("lpt.config", "ConfigError"),
        ("lpt_resources.captions.sources", "SpecError"),
        ("lpt_resources.engines.preflight", "EngineCheckError"),
        ("lpt_assets.registry", "RegistryError"),
    ]
    for module, name in known:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(error, kind):
            return str(error)
    return None


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}


class _Commands(TyperGroup):
    """lpt's commands: a user's mistake any of them raises becomes one line on stderr and exit
    code 2, unless the group's own `--debug` (read from its parsed options) or LPT_DEBUG=1 asks
    for the traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            message = user_error_message(error)
            if message is None or ctx.params.get("debug") or _debug_env():
                raise
            typer.echo(f"lpt: {message}", err=True)
            typer.echo("(run with --debug for the traceback)", err=True)
            sys.exit(2)


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    help=(__doc__ or "").split("\n\n")[0],
    rich_markup_mode=None,  # plain help: quick to import, no `<bool>` type column
    pretty_exceptions_enable=False,
)
job_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Run Dagster jobs by workspace file and partition."
)
app.add_typer(job_app, name="job", short_help="Run one Dagster job by name and partition.")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Pipeline config (TOML). Default: $LPT_CONFIG, else lpt.toml.", show_default=False
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help=f"Dagster events shown: {', '.join(LOG_LEVELS)}.", case_sensitive=False)
]


def _check_log_level(level: str) -> None:
    if level.upper() not in LOG_LEVELS:
        raise UserError(f"--log-level {level!r}: use one of {', '.join(LOG_LEVELS)}")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also LPT_DEBUG=1).")] = False,
) -> None:
    """`--debug` is read by _Commands, around every command."""


def _home() -> Path:
    """$DAGSTER_HOME, or the repo's own dagster_home/ (sqlite) if unset."""
    return Path(os.environ.get("DAGSTER_HOME") or REPO_DAGSTER_HOME).expanduser()


def _instance() -> DagsterInstance:
    """The instance in _home().

    Opening a sqlite instance creates its schema on first use, and two processes doing that at
    once collide (`table run_tags already exists`, duplicate alembic heads): two `lpt` commands
    started together on a fresh home take turns here."""
    from dagster import DagsterInstance
    from filelock import FileLock

    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(home / ".lpt-instance.lock"):
        return DagsterInstance.from_config(str(home))


def _config(path: Path | None) -> PipelineConfig:
    from lpt.config import load_config

    return load_config(path)


def _preflight(settings: PipelineConfig, roles: list[str] | None = None) -> list[str]:
    from lpt_resources.engines.preflight import check_engines

    return check_engines(settings.engines, roles or settings.engine_roles())


@app.command(short_help="Add a caption source's shards to the instance.")
def register(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SPEC", help="Source spec, e.g. sample, manifest:new.jsonl, docci:/data/docci?split=train."
        ),
    ],
    config: ConfigOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="First remove the shards this source registered before.")
    ] = False,
    yes: YesOption = False,
) -> None:
    """Add a caption source's shards to the instance. Registering the same source again adds
    nothing; a source whose data changed is refused unless `--replace` first removes its old
    shards (as `lpt unregister` does).

    Sources: `sample`, `docci:/data/docci?split=train&limit=500`, `manifest:new.jsonl`,
    `hf:org/name`; options after `?` (shard_size, limit, seed, name, split, ...)."""
    settings = _config(config)
    from lpt_resources.captions.sources import check_location, parse_spec

    check_location(parse_spec(source))  # a bad spec or path stops here, before anything is removed
    from lpt_assets.registry import register_source
    from lpt_resources.storage import ParquetStore

    with _instance() as instance:
        if replace:
            _unregister(source, settings, instance, yes)
        result = register_source(source, ParquetStore(base=settings.storage), instance)
    typer.echo(f"{result.source}: {result.items} items in {len(result.shards)} shards, {len(result.added)} new")
    for key in result.shards:
        typer.echo(f"  {key}{'  (new)' if key in result.added else ''}")


@app.command(short_help="Remove a source's shards, their history and their tables.")
def unregister(
    source: Annotated[
        str, typer.Argument(metavar="SPEC", help="The spec the source was registered with (its name and split count).")
    ],
    config: ConfigOption = None,
    yes: YesOption = False,
) -> None:
    """Remove the shards a source registered: their partitions and materialization history in
    the Dagster instance, every stage's tables, their response-cache entries and export parts.
    A corrected spec can then be registered."""
    settings = _config(config)
    with _instance() as instance:
        if not _unregister(source, settings, instance, yes):
            typer.echo(f"no registered shards come from {source!r}")


def _unregister(source: str, settings: PipelineConfig, instance: DagsterInstance, yes: bool) -> bool:
    """Ask, then remove the source's shards; whether it had any."""
    from lpt_assets.registry import registered_shards, unregister_shards
    from lpt_resources.captions.sources import parse_spec
    from lpt_resources.storage import ParquetStore

    keys = registered_shards(parse_spec(source), ParquetStore(base=settings.storage), instance)
    if not keys:
        return False
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    if not yes and not typer.confirm(f"Remove {len(keys)} shard(s) ({shown}) and all their data?"):
        typer.echo("nothing removed", err=True)
        raise typer.Exit(1)
    done = unregister_shards(keys, settings, instance)
    typer.echo(
        f"removed {len(done.shards)} shard(s): {done.tables} tables, {done.cache_partitions} response-cache "
        f"partitions, {len(done.exported)} exported shard(s)"
    )
    return True


@app.command(short_help="Check every role's engine settings in seconds.")
def check(config: ConfigOption = None) -> None:
    """Check each role's engine without loading a model: a local model path exists, a hub id
    is well formed (and cached when offline), a server answers /v1/models and serves the
    model. Exits 2 naming the role, setting and value of the first that cannot work."""
    settings = _config(config)
    for line in _preflight(settings):
        typer.echo(f"ok  {line}")


def run_pipeline(instance: DagsterInstance, config: PipelineConfig, keys: list[str], log_level: str = "INFO") -> None:
    """One run for all the shards (a single engine load), then the exports; Dagster's console
    log shows `log_level` and above (its own default, DEBUG, buries the summary)."""
    from lpt_assets.location import EXPORT_JOB, PIPELINE_JOB, build_definitions
    from lpt_assets.partitions import range_tags

    defs = build_definitions(config)
    console = {"loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
    # A failed run is reported by Dagster's own log and the exit status; re-raising it instead
    # would hand typer's pretty-printer a chain of Dagster frames that takes minutes to render.
    result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        instance=instance,
        tags=range_tags(keys[0], keys[-1]),
        run_config=console,
        raise_on_error=False,
    )
    if result.success:
        result = defs.resolve_job_def(EXPORT_JOB).execute_in_process(
            instance=instance, run_config=console, raise_on_error=False
        )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        while error is not None and error.cause is not None:  # the user code's own error
            error = error.cause
        detail = error.message.strip() if error is not None else ""
        typer.echo(f"run {result.run_id} ({result.job_def.name}) failed: {detail}", err=True)
        raise typer.Exit(1)


def _print_summary(settings: PipelineConfig, instance: DagsterInstance, keys: list[str], as_json: bool) -> None:
    from lpt_assets.summary import render, summarize
    from lpt_resources.storage import ParquetStore

    summary = summarize(ParquetStore(base=settings.storage), instance, keys, settings)
    typer.echo(json.dumps(summary, indent=2) if as_json else render(summary))


@app.command(short_help="Run the bundled sample end to end and print what came out.")
def demo(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    source: Annotated[str, typer.Option(help="Caption source to run on.")] = "sample",
    log_level: LogLevelOption = "INFO",
) -> None:
    """Register the bundled sample (or another source), materialize every asset and print what
    came out. A second run sends nothing the response cache already holds."""
    from lpt_assets.registry import register_source
    from lpt_resources.storage import ParquetStore

    _check_log_level(log_level)
    settings = _config(config)
    _preflight(settings)
    with _instance() as instance:
        registration = register_source(source, ParquetStore(base=settings.storage), instance)
        run_pipeline(instance, settings, registration.shards, log_level)
        _print_summary(settings, instance, registration.shards, as_json)


class CodeLocation(BaseModel):
    """A workspace file's `python_module` or `python_file` entry, paths resolved against the file."""

    module_name: str | None = None
    python_file: str | None = None
    working_directory: str
    attribute: str | None = None

    def cli_args(self) -> list[str]:
        """The same location as `dagster job execute`'s own options."""
        target = ["-m", self.module_name] if self.module_name else ["-f", str(self.python_file)]
        return [*target, "-d", self.working_directory, *(["-a", self.attribute] if self.attribute else [])]


def workspace_pointer(workspace: Path, location: str | None = None) -> CodeLocation:
    """The code location a workspace file names (`-l` picks one of several): Dagster 1.13's
    `dagster job execute` takes no workspace file, only `-m`/`-f`, `-d` and `-a`."""
    import yaml

    if not workspace.is_file():
        raise UserError(f"{workspace}: no such workspace file (give one with -w/--workspace)")
    entries = (yaml.safe_load(workspace.read_text()) or {}).get("load_from") or []
    base = workspace.resolve().parent
    found: dict[str, CodeLocation] = {}
    for entry in entries:
        kind, spec = next(iter(entry.items()))
        if kind not in ("python_module", "python_file"):
            continue
        spec = {"module_name" if kind == "python_module" else "relative_path": spec} if isinstance(spec, str) else spec
        target = spec.get("module_name") or spec["relative_path"]
        found[spec.get("location_name", target)] = CodeLocation(
            module_name=spec.get("module_name"),
            python_file=str(base / spec["relative_path"]) if kind == "python_file" else None,
            working_directory=str(base / spec.get("working_directory", ".")),
            attribute=spec.get("attribute"),
        )
    if not found:
        raise typer.BadParameter(f"{workspace} names no python_module or python_file code location")
    if location is None and len(found) == 1:
        return next(iter(found.values()))
    if location not in found:
        raise typer.BadParameter(f"choose a code location with --location: {', '.join(sorted(found))}")
    return found[location]


def _shards_named(instance: DagsterInstance, partition: str | None, partition_range: str | None) -> list[str]:
    """The registered shards a --partition or --partition-range names, in registration order;
    Dagster's CLI runs a partition tag naming no shard, so an unknown one is refused here."""
    from lpt_assets.partitions import SHARDS

    ordered = instance.get_dynamic_partitions(SHARDS)
    start, _, end = (partition_range or "").partition("...")
    named = [partition] if partition else [start, end]
    for key in named:
        if key not in ordered:
            raise UserError(f"no registered shard {key!r} (see `lpt register`)")
    if partition:
        return [partition]
    if ordered.index(start) > ordered.index(end):
        raise UserError(f"--partition-range {partition_range}: {start} is registered after {end}")
    return list(ordered[ordered.index(start) : ordered.index(end) + 1])


def _run_tags(tags: str | None, keys: list[str], invocation: str) -> dict[str, str]:
    """--tags, then Dagster's partition tags for `keys`, then the tag this command finds its run by."""
    from lpt_assets._dagster_compat import PARTITION_NAME_TAG
    from lpt_assets.partitions import range_tags

    try:
        extra = json.loads(tags) if tags else {}
    except json.JSONDecodeError as error:
        raise UserError(f"--tags {tags!r}: not JSON ({error})") from error
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise UserError(f"--tags {tags!r}: give a JSON object of strings")
    if len(keys) == 1:
        extra[PARTITION_NAME_TAG] = keys[0]
    elif keys:
        extra.update(range_tags(keys[0], keys[-1]))
    return {**extra, INVOCATION_TAG: invocation}


def _dagster_cli() -> list[str]:
    """Dagster's CLI of this environment: its `dagster` script, else `python -m dagster`."""
    script = Path(sys.executable).with_name("dagster")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dagster"]


def _quiet_warnings() -> str:
    """The child's $PYTHONWARNINGS, less Dagster's notice that `dagster job execute` is superseded
    (by `dg`, not installed here): the user typed `lpt job execute`."""
    superseded = "ignore:Function `job_execute_command` is superseded"
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), superseded]))


@job_app.command("execute", short_help="Run a job with Dagster's CLI, for one shard or a range.")
def job_execute(
    job: Annotated[
        str, typer.Option("-j", "--job", help="Job name, e.g. lpt_pipeline, ask, think_harder, lpt_exports.")
    ],
    workspace: Annotated[Path, typer.Option("-w", "--workspace", help="Workspace file.")] = Path("workspace.yaml"),
    partition: Annotated[str | None, typer.Option(help="One shard, e.g. sample-train-00000.")] = None,
    partition_range: Annotated[str | None, typer.Option(help="Shards START...END, in one run.")] = None,
    location: Annotated[
        str | None, typer.Option("-l", "--location", help="Code location, if the workspace names several.")
    ] = None,
    tags: Annotated[str | None, typer.Option(help="Extra run tags as a JSON object.")] = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a job through Dagster's own `dagster job execute`, in a child process, on the
    instance in $DAGSTER_HOME: the code location taken from a workspace file, the partition (or
    range) turned into Dagster's partition tags, `--config` handed to the child as $LPT_CONFIG.
    Then print the summary of the shards it ran (as `lpt demo` does). Exits non-zero when the
    run fails."""
    from dagster import RunsFilter

    _check_log_level(log_level)
    if partition and partition_range:
        raise UserError("give --partition or --partition-range, not both")
    settings = _config(config)
    from lpt_assets.location import PIPELINE_JOB, stage_jobs, stage_roles

    per_shard = job == PIPELINE_JOB or job in stage_jobs(settings)
    if per_shard and not (partition or partition_range):
        raise UserError(
            f"job {job} runs per shard: give --partition KEY or --partition-range START...END (see `lpt register`)"
        )
    if not per_shard and (partition or partition_range):
        raise UserError(f"job {job} does not run per shard: drop --partition/--partition-range")
    roles: dict[str, list[str] | None] = {**stage_roles(settings), PIPELINE_JOB: None}
    if job in roles and roles[job] != []:
        _preflight(settings, roles[job])
    code_location = workspace_pointer(workspace, location)
    invocation = str(uuid.uuid4())
    env = {**os.environ, "DAGSTER_HOME": str(_home()), "PYTHONWARNINGS": _quiet_warnings()}
    if config is not None:
        env["LPT_CONFIG"] = str(config.resolve())
    with _instance() as instance, tempfile.TemporaryDirectory(prefix="lpt-job-") as scratch:
        keys = _shards_named(instance, partition, partition_range) if per_shard else []
        run_config = Path(scratch) / "run_config.yaml"  # JSON is YAML
        run_config.write_text(json.dumps({"loggers": {"console": {"config": {"log_level": log_level.upper()}}}}))
        command = [
            *_dagster_cli(),
            "job",
            "execute",
            *code_location.cli_args(),
            "-j",
            job,
            "--tags",
            json.dumps(_run_tags(tags, keys, invocation)),
            "-c",
            str(run_config),
        ]
        done = subprocess.run(command, env=env, check=False)  # Dagster reports a failure itself
        if done.returncode != 0:
            raise typer.Exit(done.returncode)
        [run] = instance.get_runs(filters=RunsFilter(tags={INVOCATION_TAG: invocation}), limit=1)
        typer.echo(f"run {run.run_id} succeeded")
        if keys:
            _print_summary(settings, instance, keys, as_json)


if __name__ == "__main__":
    app()
