"""Engine preflight at the start of a run's first generation step: every engine the run's
generation assets will use is checked in seconds (lpt_resources/engines/preflight.py), so a
wrong model path or a dead server fails the run before any work, naming the role and value."""

from __future__ import annotations

from dagster import AssetExecutionContext, AssetKey, Failure

from lpt.config import Engines
from lpt.stages import STAGES
from lpt_resources.engines.preflight import EngineCheckError, check_engine

# Which engine role each engine stage's asset uses.
ROLE_OF_ASSET = {stage.table.name: stage.role for stage in STAGES}
_checked: set[tuple[str, str]] = set()  # (run id, role) already checked in this process


def assets_in_run(context: AssetExecutionContext) -> set[AssetKey]:
    """The assets this run materializes."""
    # A run of the whole job carries no selection: None, or an empty set from execute_in_process
    # and an ad-hoc `materialize`.
    selection = context.run.asset_selection
    return set(selection) if selection else set(context.job_def.asset_layer.executable_asset_keys)


def roles_in_run(context: AssetExecutionContext) -> list[str]:
    """The roles whose assets this run materializes, in pipeline order."""
    names = {key.to_user_string() for key in assets_in_run(context)}
    return list(dict.fromkeys(role for asset, role in ROLE_OF_ASSET.items() if asset in names))


def preflight_run(context: AssetExecutionContext, engines_config: Engines) -> None:
    """Check the run's engines once per run and process (later steps of the same run skip the
    roles already checked); a failure ends the step with the check's own one-line reason."""
    for role in roles_in_run(context):
        if (context.run.run_id, role) in _checked:
            continue
        try:
            found = check_engine(role, getattr(engines_config, role))
        except EngineCheckError as error:
            raise Failure(
                description=f"engine preflight: {error}", metadata={"role": role, "setting": error.setting}
            ) from None
        context.log.info(f"engine preflight: {found}")
        _checked.add((context.run.run_id, role))
