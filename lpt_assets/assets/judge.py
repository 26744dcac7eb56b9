"""The optional judge per shard (lpt/judge.py, `JudgeStage`): the judge engine reads each kept
long CoT and gives a JSON verdict, through the same streaming run and response cache as
generation (a rerun sends nothing). Curation drops what the verdicts say to drop; the rest is
only recorded."""

from dagster import AssetsDefinition

from lpt.config import PipelineConfig
from lpt.stages import JudgeStage
from lpt_assets.assets.generate import stage_asset


def build_judge_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    return [stage_asset(JudgeStage(config), config)] if config.judge.enabled else []
