"""Dagster wiring for the lpt pipeline: partitions, assets, jobs, the CLI."""

import warnings

# Single-run backfill policies and pools are the point of our GPU design, not an experiment.
# Matched by Dagster's wording rather than its warning classes, so that importing this package
# (the `lpt` command does, for `--help` too) does not import Dagster.
warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview),")
