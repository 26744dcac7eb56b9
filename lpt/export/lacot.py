"""LaCoT's SFT format: LLaVA-style `{id, image, conversations}` rows with `human` / `reason` /
`gpt` turns (LaCoT maps them to user / Analyzer / assistant), one JSON file per shard; LaCoT's
`SupervisedDataset` reads such a file as its `data_path`.

The instruction matches the target: with the tags stripped (the default) the reason turn is the
bare reasoning, the gpt turn the bare answer, and the human turn asks for the answer's style
without any tags; with `keep_tags` both turns keep `<think>` / `<answer>` and the human turn
keeps the instructions that ask for them."""

from __future__ import annotations

from typing import Any

from lpt.export.common import IMAGE_PLACEHOLDER, clean, image_ref, split_response
from lpt.prompts import ANSWER_INSTRUCTIONS, PLAIN_ANSWER_INSTRUCTIONS
from lpt.records import SftSample

FOLDER = "lacot"
README_FILE = "README.md"


def untagged_prompt(prompt: str) -> str:
    """The prompt with its closing answer instruction asked without tags."""
    for style, tagged in ANSWER_INSTRUCTIONS.items():
        if prompt.endswith(tagged):
            return prompt[: -len(tagged)] + PLAIN_ANSWER_INSTRUCTIONS[style]
    raise ValueError(f"the prompt does not end with a known answer instruction: {prompt[-120:]!r}")


def lacot_row(s: SftSample, image_root: str, keep_tags: bool = False, reward: float | None = None) -> dict[str, Any]:
    """One row; the image path is relative to `image_root` (LaCoT's `image_folder`); `reward`
    (the short CoT's LaCoT reward, where it was scored) rides along as an extra key."""
    think, answer = split_response(s.response)
    if keep_tags:
        human = f"{s.system}\n\n{s.prompt}" if s.system.strip() else s.prompt
        reason, gpt = f"<think>\n{think}\n</think>", f"<answer>{answer}</answer>"
    else:
        human, reason, gpt = untagged_prompt(s.prompt), think, answer
    row: dict[str, Any] = {
        "id": s.sample_id,
        "image": image_ref(s.image_path, image_root, "relative"),
        "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{clean(human)}"},
            {"from": "reason", "value": clean(reason)},
            {"from": "gpt", "value": clean(gpt)},
        ],
    }
    if reward is not None:
        row["reward"] = reward
    return row


def readme(folder_url: str, image_root: str, rows: int, keep_tags: bool) -> str:
    tags = "keep their `<think>` / `<answer>` tags" if keep_tags else "carry no tags, and no instruction asks for any"
    return f"""# LaCoT export

{rows} rows in LaCoT's SFT format (LLaVA-style `{{id, image, conversations}}` with `human`,
`reason` and `gpt` turns), one JSON file per image shard. The reason and gpt turns {tags}.
Rows whose short CoT was scored carry its LaCoT `reward` (mean log-probability per token of
the reasoning with the gold answer). `bin/` holds the Best-of-N log per shard in LaCoT's own
schema (`rationals`, `solutions`, `likelihoods`, `best_index`).

Image paths are relative to `{image_root}` (`..` where an image lies outside it): pass that
folder as LaCoT's `--image_folder`.

LaCoT's `SupervisedDataset` takes one file (or a list of rows) as `data_path`. To train on every
shard, join the files first:

```sh
jq -s add {folder_url}/*.json > lacot_all.json
```
"""
