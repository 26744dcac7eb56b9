"""The code location Dagster loads (`dagster dev`, `dagster job execute -m lpt_assets.definitions`,
workspace.yaml), built from $LPT_CONFIG, else lpt.toml."""

from lpt.config import load_config
from lpt_assets.location import build_definitions

defs = build_definitions(load_config())
