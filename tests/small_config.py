"""The small pipeline config that subprocess tests write as `lpt.toml`: the bundled SmolLM2 with
budgets small enough for a 2-core machine, two questions per image, two short CoTs per MCQ;
`SMALL` is the same config as a dict, for tests that build a `PipelineConfig` in process."""

import tomllib

SMALL_TOML = """
storage = "data"
exports = "exports"
[ask]
questions_per_image = 2
sampling = { n = 1, temperature = 0.7, top_p = 0.95, max_tokens = 240 }
[think]
caption_stand_in = true
constrain_format = true
sampling = { n = 2, temperature = 0.8, top_p = 0.9, max_tokens = 48 }
[think_harder]
constrain_format = true
retry_max_tokens = 64
sampling = { n = 1, temperature = 0.7, top_p = 0.8, top_k = 50, max_tokens = 48 }
"""
SMALL = tomllib.loads(SMALL_TOML)
