"""LLaMA-Factory: ShareGPT rows (OpenAI roles) in one JSON Lines part per shard, bound by our own
`dataset_info.json`, whose entries name the part *folders* (LLaMA-Factory loads every file of a
folder given as `file_name`). We never edit another tool's `dataset_info.json` in place."""

from __future__ import annotations

from typing import Any

from lpt.export.common import IMAGE_PLACEHOLDER, ImagePaths, clean, image_ref
from lpt.records import DpoPair, SftSample

FOLDER = "llamafactory"
DATASET_INFO_FILE = "dataset_info.json"
README_FILE = "LLAMAFACTORY_README.md"
SHAREGPT_TAGS: dict[str, str] = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def _prompt_messages(system: str, prompt: str) -> list[dict[str, str]]:
    messages = []
    if system.strip():
        messages.append({"role": "system", "content": clean(system)})
    messages.append({"role": "user", "content": IMAGE_PLACEHOLDER + clean(prompt)})
    return messages


def sft_row(s: SftSample, folder: str, image_paths: ImagePaths) -> dict[str, Any]:
    """One SFT row; relative image paths are relative to `folder`, LLaMA-Factory's `media_dir`."""
    messages = _prompt_messages(s.system, s.prompt)
    messages.append({"role": "assistant", "content": clean(s.response)})
    return {"messages": messages, "images": [image_ref(s.image_path, folder, image_paths)]}


def dpo_row(p: DpoPair, folder: str, image_paths: ImagePaths) -> dict[str, Any]:
    return {
        "messages": _prompt_messages(p.system, p.prompt),
        "chosen": {"role": "assistant", "content": clean(p.chosen)},
        "rejected": {"role": "assistant", "content": clean(p.rejected)},
        "images": [image_ref(p.image_path, folder, image_paths)],
    }


def dataset_info(name_prefix: str, kinds: set[str]) -> dict[str, Any]:
    """Entries for the part folders that hold rows (`sft`, `dpo`): a folder with no file would
    fail LLaMA-Factory's loader, so an empty kind is left out."""
    entries: dict[str, Any] = {}
    if "sft" in kinds:
        entries[f"{name_prefix}_sft"] = {
            "file_name": "sft",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": dict(SHAREGPT_TAGS),
        }
    if "dpo" in kinds:
        entries[f"{name_prefix}_dpo"] = {
            "file_name": "dpo",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
            "tags": dict(SHAREGPT_TAGS),
        }
    return entries


def readme(
    folder_url: str, name_prefix: str, sft_rows: int, dpo_rows: int, by_type: dict[str, int], image_paths: ImagePaths
) -> str:
    types = "\n".join(f"| `{t}` | {n} |" for t, n in sorted(by_type.items())) or "| (none) | 0 |"
    where = "relative to this folder" if image_paths == "relative" else "absolute"
    return f"""# LLaMA-Factory export

| dataset | folder | rows |
|---|---|---|
| `{name_prefix}_sft` | `sft/` | {sft_rows} |
| `{name_prefix}_dpo` (`"ranking": true`) | `dpo/` | {dpo_rows} |

Each folder holds one JSON Lines file per image shard; `dataset_info.json` names the folders,
and LLaMA-Factory loads every file in them. A shard that is redone replaces its file; a shard
whose quality checks failed has none.

DPO pairs by type:

| pair type | rows |
|---|---|
{types}

Image paths are {where} (where an image lies on another filesystem than this folder, its
absolute path or URL).

## Use it

`dataset_info.json` here is ours and names only these datasets. Point LLaMA-Factory at this
folder in the training YAML:

```yaml
dataset_dir: {folder_url}
dataset: {name_prefix}_sft      # or {name_prefix}_dpo with `stage: dpo`
template: qwen2_vl
```

Relative image paths resolve against `media_dir`, which defaults to `dataset_dir`.

## Merge into another registry

Do not let a tool rewrite either file in place. Merge into a copy, review, then move it:

```sh
jq -s '.[0] * .[1]' LLaMA-Factory/data/dataset_info.json {folder_url}/dataset_info.json > merged.json
```

Then make each `file_name` reach these folders (an absolute path or a symlink) and either export
with `image_paths = "absolute"` or set `media_dir: {folder_url}`.
"""
