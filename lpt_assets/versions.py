"""Code versions of the per-shard assets, chained down the pipeline.

Dagster marks an asset stale when its own code version changes, but not its descendants until
the asset is rematerialized. Each stage's version therefore folds in the version of the stage
it reads from: after a change to stage 3's prompt, sampling or model, the UI (and the backfill
schedule) shows stage 3 and everything after it stale for every shard, and stages 1 and 2
fresh, before anything has run.
"""

from lpt.config import EngineSettingsBase, PipelineConfig, StageConfig
from lpt.parse import MCQ_RULES_VERSION, TRACE_RULES_VERSION
from lpt.records import stable_id
from lpt.tables import (
    CAPTIONS,
    DPO_PAIRS,
    JUDGE_VERDICTS,
    LONG_COTS,
    MCQS,
    RATIONALE_SCORES,
    SFT_SAMPLES,
    SIMPLE_COTS,
    VERIFIED,
)
from lpt_assets.assets.ingest import CAPTIONS_VERSION


def stage_version(stage: StageConfig, engine: EngineSettingsBase | None, upstream: str, *extra: object) -> str:
    """Readable stage version, then a hash of its config, its engine's output identity and its upstream."""
    identity = engine.output_identity() if engine is not None else ""
    return f"{stage.version}-{stable_id(stage.fingerprint(), identity, upstream, *extra)[:12]}"


def code_versions(config: PipelineConfig) -> dict[str, str]:
    """asset name -> code version. Stages that ban the verify stage's leak words at decode time
    depend on that list too; stage 1 on the MCQ rules, stage 3 (which grades short CoTs to pick
    those it extends) on the trace rules, and on the rationale scores when it extends only the
    best-rewarded ones."""
    leak_words = config.verify.leak_words
    think, harder = config.think, config.think_harder
    mcqs = stage_version(config.ask, config.engines.ask, CAPTIONS_VERSION, MCQ_RULES_VERSION)
    simple_cots = stage_version(
        think,
        config.engines.vlm,
        mcqs,
        leak_words if think.caption_stand_in and think.ban_leak_words_in_stand_in else (),
    )
    scores = stage_version(config.scoring, config.engines.vlm, simple_cots, TRACE_RULES_VERSION)
    long_cots = stage_version(
        harder,
        config.engines.reasoner,
        simple_cots,
        leak_words if harder.ban_leak_words else (),
        TRACE_RULES_VERSION,
        *([scores] if harder.expand_top_k_by_reward else []),
    )
    verified = stage_version(config.verify, None, long_cots)
    versions = {
        CAPTIONS: CAPTIONS_VERSION,
        MCQS: mcqs,
        SIMPLE_COTS: simple_cots,
        RATIONALE_SCORES: scores,
        LONG_COTS: long_cots,
        VERIFIED: verified,
    }
    selected_from = verified
    if config.judge.enabled:  # the judge's drops change what is selected
        versions[JUDGE_VERDICTS] = selected_from = stage_version(config.judge, config.engines.judge, verified)
    versions[SFT_SAMPLES] = versions[DPO_PAIRS] = stage_version(config.select, None, selected_from)
    return {table.name: version for table, version in versions.items()}
