"""After a real run, a config change marks exactly the changed stage and those after it stale,
for every shard, as Dagster's own stale-status resolver (the UI's "stale" badges) sees it."""

import pytest
from dagster import AssetKey
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from lpt.config import PipelineConfig
from lpt_assets.location import build_definitions
from lpt_assets.schedules import Staleness

pytestmark = pytest.mark.slow

STAGES = ["captions", "mcqs", "simple_cots", "long_cots", "verified", "sft_samples", "dpo_pairs"]
KEYS = ["batch-01-all-00000", "batch-01-all-00001"]  # the two shards of the shared run (conftest)


@pytest.fixture
def done(dropped_and_run):
    _, config, _, instance, _ = dropped_and_run
    return config, instance, KEYS


def stale_resolver(instance, asset_graph) -> CachingStaleStatusResolver:
    """Dagster's stale-status resolver (the one behind the UI's "stale" badges), as of now."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def statuses(config: PipelineConfig, instance, keys: list[str]) -> dict[str, set[StaleStatus]]:
    """asset -> the statuses its shards have, judged against the Definitions built from `config`."""
    graph = build_definitions(config).resolve_asset_graph()
    resolver = stale_resolver(instance, graph)
    seen = {name: {resolver.get_status(AssetKey(name), key) for key in keys} for name in STAGES}
    # the backfill schedule's bulk reads find the same stale assets as Dagster's resolver
    needed = Staleness(instance, graph, [AssetKey(name) for name in STAGES], keys).needed
    assert {name for todo in needed.values() for name in (a.to_user_string() for a in todo)} == {
        name for name, found in seen.items() if found != {StaleStatus.FRESH}
    }
    return seen


def changed(config: PipelineConfig, section: str, **update) -> PipelineConfig:
    if section.startswith("engines."):
        role = section.split(".")[1]
        engines = config.engines.model_copy(update={role: getattr(config.engines, role).model_copy(update=update)})
        return config.model_copy(update={"engines": engines})
    return config.model_copy(update={section: getattr(config, section).model_copy(update=update)})


def test_nothing_is_stale_after_the_run(done):
    config, instance, keys = done
    assert len(keys) == 2
    assert statuses(config, instance, keys) == {name: {StaleStatus.FRESH} for name in STAGES}


def test_a_stage3_change_makes_stage3_and_later_stale_for_every_shard(done):
    config, instance, keys = done
    sampling = config.think_harder.sampling.model_copy(update={"temperature": 0.5})
    seen = statuses(changed(config, "think_harder", sampling=sampling), instance, keys)
    assert seen == {
        "captions": {StaleStatus.FRESH},
        "mcqs": {StaleStatus.FRESH},
        "simple_cots": {StaleStatus.FRESH},
        "long_cots": {StaleStatus.STALE},
        "verified": {StaleStatus.STALE},
        "sft_samples": {StaleStatus.STALE},
        "dpo_pairs": {StaleStatus.STALE},
    }


@pytest.mark.parametrize(
    ("section", "update", "first_stale"),
    [
        ("ask", {"questions_per_image": 3}, "mcqs"),
        ("think", {"image_max_side": 256}, "simple_cots"),
        ("engines.reasoner", {"model": "another-reasoner"}, "long_cots"),
        ("verify", {"version": "2"}, "verified"),
        ("select", {"sft_per_mcq": 2}, "sft_samples"),
    ],
)
def test_each_change_marks_its_stage_and_everything_after(done, section, update, first_stale):
    config, instance, keys = done
    seen = statuses(changed(config, section, **update), instance, keys)
    cut = STAGES.index(first_stale)
    expected = {name: {StaleStatus.FRESH if i < cut else StaleStatus.STALE} for i, name in enumerate(STAGES)}
    assert seen == expected


def test_leak_words_reach_the_stages_that_ban_them(done):
    """The demo bans the leak words while generating (stages 2 and 3), so they belong to those
    stages' versions too; the MCQs do not depend on them."""
    config, instance, keys = done
    seen = statuses(changed(config, "verify", leak_words=("description",)), instance, keys)
    assert seen["mcqs"] == {StaleStatus.FRESH}
    assert seen["simple_cots"] == seen["long_cots"] == seen["dpo_pairs"] == {StaleStatus.STALE}
