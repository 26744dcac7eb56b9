"""Dagster wiring for the lpt pipeline: partitions, assets, jobs, the CLI."""

import warnings

from dagster import BetaWarning, PreviewWarning

# Single-run backfill policies and pools are the point of our GPU design, not an experiment.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
