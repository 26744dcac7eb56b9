"""LaCoT rationale scores per shard (`ScoringStage`): the VLM scores each short CoT with each of
the MCQ's four answers, teacher-forced after the stage-2 prompt (image and question), through
the same streaming run and response cache as generation, so a rerun sends nothing."""

from dagster import AssetsDefinition

from lpt.config import PipelineConfig
from lpt.stages import ScoringStage
from lpt_assets.assets.generate import stage_asset


def build_scoring_assets(config: PipelineConfig) -> list[AssetsDefinition]:
    return [stage_asset(ScoringStage(config), config)] if config.scoring.enabled else []
