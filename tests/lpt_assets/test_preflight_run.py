"""`preflight_run` at the start of a generation step: in a real Dagster run, every engine the
run's generation assets use is checked before any work, and a wrong one fails the step with the
role, setting and value."""

import time

from dagster import AssetExecutionContext, asset, instance_for_test, materialize

from lpt.config import Engines, engine_settings
from lpt_assets.preflight import preflight_run


def _assets(engines: Engines, worked: list[str]):
    """Stand-ins named like the generation assets (the role comes from the asset's name)."""

    @asset(name="mcqs")
    def mcqs(context: AssetExecutionContext) -> None:
        preflight_run(context, engines)
        worked.append("mcqs")

    @asset(name="long_cots", deps=[mcqs])
    def long_cots(context: AssetExecutionContext) -> None:
        preflight_run(context, engines)
        worked.append("long_cots")

    return [mcqs, long_cots]


def test_a_missing_reasoner_path_fails_the_first_generation_step(tmp_path):
    engines = Engines(reasoner=engine_settings(model=str(tmp_path / "no-such-model")))
    worked: list[str] = []
    started = time.perf_counter()
    with instance_for_test() as instance:
        result = materialize(_assets(engines, worked), instance=instance, raise_on_error=False)
    assert time.perf_counter() - started < 30
    assert not result.success and worked == []  # the ask step failed for the reasoner's sake, before any work
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "mcqs"
    message = failure.step_failure_data.user_failure_data.description
    assert (
        message
        == f"engine preflight: engines.reasoner.model = '{tmp_path / 'no-such-model'}': no such local model folder (a hub id looks like org/name)"
    )


def test_a_run_checks_only_the_roles_it_uses_and_each_once(tmp_path):
    engines = Engines(reasoner=engine_settings(model=str(tmp_path / "no-such-model")))
    worked: list[str] = []
    with instance_for_test() as instance:
        result = materialize(_assets(engines, worked)[:1], instance=instance)
        logged = [e.message for e in instance.all_logs(result.run_id) if "engine preflight" in (e.message or "")]
    assert result.success and worked == ["mcqs"]
    assert len(logged) == 1 and "ask: bundled" in logged[0]


def test_later_steps_of_a_run_do_not_check_again():
    worked: list[str] = []
    with instance_for_test() as instance:
        result = materialize(_assets(Engines(), worked), instance=instance)
        logged = [e.message for e in instance.all_logs(result.run_id) if "engine preflight" in (e.message or "")]
    assert result.success and worked == ["mcqs", "long_cots"]
    assert [m.split("engine preflight: ")[1].split(":")[0] for m in logged] == ["ask", "reasoner"]
