"""Hugging Face `datasets`: one Parquet part per shard and config, and a dataset card whose
`configs` glob the parts, so `load_dataset(folder, "sft")` (or a hub repo pushed from the folder)
works without our code.

Rows use the typed-content messages TRL's vision-language trainers take: the user turn is
`[{"type": "image"}, {"type": "text", ...}]` and `images` is a list of `Image()` values whose
bytes are in the Parquet by default, so a copy or `push_to_hub` keeps the pictures (each image is
stored once per part: the column is dictionary-encoded). The `*_text` configs are the same rows
for text models: plain-string messages and no image part or column."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from lpt.export.common import clean, is_url
from lpt.export.stats import Stats
from lpt.records import DpoPair, PairType, SftSample

FOLDER = "hf"
CARD_FILE = "README.md"
HfImages = Literal["embedded", "paths"]
ImageValue = dict[str, Any]  # what an `Image()` feature stores: {"bytes": ..., "path": ...}
ImageLoader = Callable[[str], ImageValue]

SFT_IDS = ("label", "trace_id", "mcq_id", "image_id", "cot_id", "long_id")
DPO_IDS = ("pair_type", "mcq_id", "image_id", "chosen_id", "rejected_id")
# Parquet falls back from dictionary to plain encoding once a dictionary page outgrows this; a
# shard's distinct images must fit, so each is stored once however many rows show it.
_DICTIONARY_PAGE_LIMIT = 1 << 30


def config_names(text: bool) -> list[str]:
    return ["sft", "dpo", *(["sft_text", "dpo_text"] if text else [])]


def features(kind: str) -> Any:
    """The `datasets.Features` of one config (`sft`, `dpo`, `sft_text`, `dpo_text`)."""
    from datasets import Features, Image, List, Value

    string = Value("string")
    text_only = kind.endswith("_text")
    content = string if text_only else List({"type": string, "text": string})
    message = List({"role": string, "content": content})
    if kind.startswith("sft"):
        columns = {"sample_id": string, "messages": message}
        ids = SFT_IDS
    else:
        columns = {"pair_id": string, "prompt": message, "chosen": message, "rejected": message}
        ids = DPO_IDS
    if not text_only:
        columns["images"] = List(Image())
    columns.update({name: string for name in ids})
    return Features(columns)


def image_loader(mode: HfImages, read: Callable[[str], bytes]) -> ImageLoader:
    """Image values as the `Image()` feature stores them: the file's own bytes (`embedded`, read
    once per image), or its absolute path or URL for `datasets` to open when a row is read."""
    cache: dict[str, ImageValue] = {}

    def load(image_path: str) -> ImageValue:
        if image_path not in cache:
            name = posixpath.basename(image_path)
            if mode == "embedded":
                cache[image_path] = {"bytes": read(image_path), "path": name}
            else:
                cache[image_path] = {
                    "bytes": None,
                    "path": image_path if is_url(image_path) else posixpath.abspath(image_path),
                }
        return cache[image_path]

    return load


def _message(role: str, text: str, text_only: bool) -> dict[str, Any]:
    return {"role": role, "content": clean(text) if text_only else [{"type": "text", "text": clean(text)}]}


def _prompt(system: str, prompt: str, text_only: bool) -> list[dict[str, Any]]:
    """System (if any) and user turns; for images the user turn leads with one image part."""
    messages = [_message("system", system, text_only)] if system.strip() else []
    user = _message("user", prompt, text_only)
    if not text_only:
        user["content"] = [{"type": "image", "text": None}, *user["content"]]
    return [*messages, user]


def sft_record(s: SftSample, kind: str, load_image: ImageLoader) -> dict[str, Any]:
    text_only = kind.endswith("_text")
    record: dict[str, Any] = {
        "sample_id": s.sample_id,
        "messages": [*_prompt(s.system, s.prompt, text_only), _message("assistant", s.response, text_only)],
        "label": s.label.value,
    }
    if not text_only:
        record["images"] = [load_image(s.image_path)]
    return record | {name: getattr(s, name) for name in SFT_IDS[1:]}


def dpo_record(p: DpoPair, kind: str, load_image: ImageLoader) -> dict[str, Any]:
    """TRL's conversational preference format: `prompt` = system + user, `chosen` / `rejected` =
    one assistant message each."""
    text_only = kind.endswith("_text")
    record: dict[str, Any] = {
        "pair_id": p.pair_id,
        "prompt": _prompt(p.system, p.prompt, text_only),
        "chosen": [_message("assistant", p.chosen, text_only)],
        "rejected": [_message("assistant", p.rejected, text_only)],
        "pair_type": p.pair_type.value,
    }
    if not text_only:
        record["images"] = [load_image(p.image_path)]
    return record | {name: getattr(p, name) for name in DPO_IDS[1:]}


def parquet_part(records: Sequence[dict[str, Any]], kind: str) -> bytes:
    """One Parquet file with the config's features in its schema metadata (what `datasets` reads
    them from), images dictionary-encoded."""
    schema = features(kind).arrow_schema
    table = pa.Table.from_pylist(list(records), schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", dictionary_pagesize_limit=_DICTIONARY_PAGE_LIMIT)
    return buffer.getvalue()


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def card(
    totals: Stats,
    *,
    license: str,
    pretty_name: str,
    text: bool,
    images: HfImages,
    run_info: Mapping[str, object],
) -> str:
    """The dataset card: YAML metadata (license, task categories, size, one config per kind
    with rows, each globbing its Parquet parts) and what a person needs to judge and load it."""
    rows = {"sft": totals.sft_rows, "dpo": totals.dpo_rows}
    configs = [
        {
            "config_name": name,
            **({"default": True} if name == "sft" else {}),
            "data_files": [{"split": "train", "path": f"{name}/*.parquet"}],
        }
        for name in config_names(text)
        if rows[name.removesuffix("_text")]
    ]
    # `datasets` keys its cache of a local folder by the folder's name and this metadata alone:
    # without sizes here it would keep serving the rows it first read after parts are added,
    # replaced or removed (and mix up two exports both named `hf`).
    infos = [
        {
            "config_name": c["config_name"],
            "splits": [
                {
                    "name": "train",
                    "num_bytes": totals.hf_bytes.get(c["config_name"], 0),
                    "num_examples": rows[c["config_name"].removesuffix("_text")],
                }
            ],
            "download_size": totals.hf_bytes.get(c["config_name"], 0),
            "dataset_size": totals.hf_bytes.get(c["config_name"], 0),
        }
        for c in configs
    ]
    front = {
        "license": license,
        "pretty_name": pretty_name,
        "language": ["en"],
        "task_categories": ["image-text-to-text", "visual-question-answering", *(["text-generation"] if text else [])],
        "tags": ["synthetic", "chain-of-thought", "sft", "dpo", "trl"],
        "size_categories": [_size_category(totals.sft_rows + totals.dpo_rows)],
        "configs": configs,
        "dataset_info": infos,
    }
    funnel = totals.funnel
    funnel_rows = [
        ("images (validated captions)", funnel.images),
        ("MCQs", funnel.mcqs),
        ("short CoTs", funnel.short_cots),
        ("long CoTs", funnel.long_cots),
        ("short CoTs kept after verification", funnel.kept_short),
        ("long CoTs kept after verification", funnel.kept_long),
        ("SFT rows", totals.sft_rows),
        ("DPO pairs", totals.dpo_rows),
    ]
    labels = "\n".join(f"| `{k}` | {v} |" for k, v in totals.sft_by_label.items()) or "| (none) | 0 |"
    kinds = (
        "\n".join(
            f"| `{k}` | {'compactness' if PairType(k).is_compactness else 'correctness'} | {v} |"
            for k, v in totals.dpo_by_type.items()
        )
        or "| (none) | | 0 |"
    )
    made = "\n".join(f"| {_md(k)} | `{_md(v)}` |" for k, v in sorted(run_info.items())) or "| (not recorded) | |"
    config_table = "\n".join(
        f"| `{c['config_name']}` | {rows[c['config_name'].removesuffix('_text')]} | `{c['data_files'][0]['path']}` |"
        for c in configs
    )
    image_note = (
        "The images are embedded: each row's `images` holds the picture's bytes, so the folder (or a hub copy) is complete on its own."
        if images == "embedded"
        else "`images` holds absolute paths (or URLs) to the pictures on the machine that made the export; `datasets` opens them when a row is read."
    )
    text_note = (
        "\n`sft_text` and `dpo_text` hold the same rows for text-only models: plain-string messages, no image part and no `images` column.\n"
        if text
        else ""
    )
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip()}
---

# {pretty_name}

Synthetic SFT and DPO data for vision-language models, made by the `lpt` pipeline after
LongPerceptualThoughts (arXiv 2504.15362): multiple-choice questions written from dense image
descriptions, short chains of thought from a VLM, and long chains of thought from a text-only
reasoner that continues each short one after a cue such as "Wait,". Every response has the form
`<think>…</think>\\n<answer>…</answer>`.

{totals.sft_rows} SFT rows and {totals.dpo_rows} DPO pairs over {totals.images} images and {totals.mcqs} questions, from {totals.shards} shards.

| config | rows | files |
|---|---|---|
{config_table}

Each config holds one Parquet file per image shard. {image_note}
{text_note}
## Funnel

| stage | rows |
|---|---|
{chr(10).join(f"| {name} | {count} |" for name, count in funnel_rows)}

## SFT (`sft`): rows by label

`O` short CoT correct; `O_O` correct short CoT, correct extension; `X_O` wrong short CoT,
corrected by the extension.

| label | rows |
|---|---|
{labels}

## DPO (`dpo`): pairs by type

`A>B`: a trace labelled A is preferred to one labelled B on the same question.

| pair type | kind | rows |
|---|---|---|
{kinds}

## How it was made

| what | value |
|---|---|
{made}

## Load it

```python
from datasets import load_dataset

sft = load_dataset("<this folder or repo>", "sft", split="train")   # messages, images, ids
dpo = load_dataset("<this folder or repo>", "dpo", split="train")   # prompt, chosen, rejected, images, pair_type
# correctness pairs only: drop the compactness pairs
dpo = dpo.filter(lambda row: row["pair_type"] != "O>O_O")
dpo[0]["images"][0]   # a PIL image
```

`dpo` is TRL's conversational preference format (`prompt` = system + user message with an image
part, `chosen` / `rejected` = one assistant message each), ready for `trl.DPOTrainer`; `sft` has
conversational `messages` for `trl.SFTTrainer`. The `*_id` columns link every row to its image,
question, short CoT and long CoT; `../provenance/` adds the models and configs per row.
"""
