"""Training-data exports: LLaMA-Factory, HF `datasets` (TRL formats), LaCoT/LLaVA, provenance.

Pure functions over the typed records (`SftSample`, `DpoPair`); no Dagster, no engines. Every
file is written atomically (a temporary file in the same folder, then `os.replace`), and every
export lists its rows sorted by id, so the same inputs give byte-identical files.

LLaMA-Factory
    `write_llamafactory` writes `{prefix}_sft.json` and `{prefix}_dpo.json` (ShareGPT/OpenAI
    style: `messages` with role/content, `images`; the DPO file adds `chosen` and `rejected`
    assistant messages) and *our own* `dataset_info.json` beside them, naming both datasets
    (`{prefix}_sft`, and `{prefix}_dpo` with `"ranking": true`). We never edit another tool's
    `dataset_info.json` in place. To train on the export, either:

    * point LLaMA-Factory at the export folder: `dataset_dir: <out_dir>` and
      `dataset: lpt_sft` (or `lpt_dpo` for `stage: dpo`) in the training YAML. Relative image
      paths resolve against `media_dir`, which defaults to `dataset_dir`, so they work as they
      are; or
    * merge our entries into your own registry yourself, e.g.
      `jq -s '.[0] * .[1]' LLaMA-Factory/data/dataset_info.json <out_dir>/dataset_info.json
      > merged.json`, review it, and move it into place; then make `file_name` reach our JSON
      files (absolute paths or a symlink) and export with `image_paths="absolute"` (or set
      `media_dir: <out_dir>`) so the images resolve.

    A `LLAMAFACTORY_README.md` with the same instructions is written into the export folder.

HF datasets / TRL
    `write_hf_datasets` saves `out_dir/sft` and `out_dir/dpo`, each a `DatasetDict` with one
    `train` split (`datasets.load_from_disk`). Messages use the typed-content form TRL's VLM
    trainers take: user content `[{"type": "image"}, {"type": "text", "text": ...}]`, other
    content `[{"type": "text", "text": ...}]`. `dpo` is TRL's conversational preference format
    (`prompt` = system + user, `chosen`/`rejected` = one assistant message each). `images` holds
    file path strings; `ds.cast_column("images", List(Image()))` decodes them. A dataset card
    (`README.md`) is written at `out_dir`.

LaCoT
    `write_lacot` writes LLaVA-style `{id, image, conversations}` rows with `human` / `reason` /
    `gpt` turns, which LaCoT's SFT loader maps to user / Analyzer / assistant.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .records import DpoPair, PairType, SftSample

ImagePaths = Literal["relative", "absolute"]

IMAGE_PLACEHOLDER = "<image>"
SHAREGPT_TAGS: dict[str, str] = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
PROVENANCE_FILE = "provenance.jsonl"
DATASET_INFO_FILE = "dataset_info.json"

_RESPONSE_RE = re.compile(
    r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL
)


# ---- results ---------------------------------------------------------------------------------


class LlamaFactoryExport(BaseModel):
    """What `write_llamafactory` wrote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: Path
    sft_file: Path
    dpo_file: Path
    dataset_info: Path
    readme: Path
    sft_dataset: str  # the names under which dataset_info.json registers the files
    dpo_dataset: str
    sft_rows: int
    dpo_rows: int
    dpo_rows_by_type: dict[str, int]
    image_paths: ImagePaths


# ---- shared helpers --------------------------------------------------------------------------


def filter_pairs(
    dpo: Iterable[DpoPair], pair_types: Collection[PairType | str] | None = None
) -> list[DpoPair]:
    """The pairs whose type is in `pair_types` (all when None), in their given order."""
    if pair_types is None:
        return list(dpo)
    wanted = {PairType(t) for t in pair_types}
    return [p for p in dpo if p.pair_type in wanted]


def split_response(response: str) -> tuple[str, str]:
    """(think, answer) from `<think>\\n…\\n</think>\\n<answer>…</answer>`, both stripped."""
    match = _RESPONSE_RE.match(response)
    if match is None:
        raise ValueError(
            "response is not '<think>…</think> <answer>…</answer>': " + repr(response[:120])
        )
    return match["think"].strip(), match["answer"].strip()


def _sorted_unique(rows: Iterable[Any], key: str) -> list[Any]:
    ordered = sorted(rows, key=lambda r: getattr(r, key))
    seen: set[str] = set()
    for row in ordered:
        rid = getattr(row, key)
        if rid in seen:
            raise ValueError(f"duplicate {key} {rid!r} in export input")
        seen.add(rid)
    return ordered


def _is_url(path: str) -> bool:
    return "://" in path


def _image_ref(image_path: str, out_dir: Path, mode: ImagePaths) -> str:
    """The image path as written into an export; URLs pass through unchanged."""
    if _is_url(image_path):
        return image_path
    absolute = os.path.abspath(image_path)
    if mode == "absolute":
        return absolute
    if mode == "relative":
        return Path(os.path.relpath(absolute, os.path.abspath(out_dir))).as_posix()
    raise ValueError(f"image_paths must be 'relative' or 'absolute', not {mode!r}")


def _clean(text: str) -> str:
    """Our own text must not carry a stray image placeholder: trainers count them per image."""
    return text.replace(IMAGE_PLACEHOLDER, "image")


def _umask_mode(base: int) -> int:
    """mkstemp/mkdtemp create private (0600/0700) entries; exports are for sharing, so they
    get the permissions an ordinary file or folder would have."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _dump_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished directory into place; an old one is moved aside first, then removed."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        old.rmdir()
        os.replace(target, old)
    os.chmod(tmp, _umask_mode(0o777))
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- LLaMA-Factory ---------------------------------------------------------------------------


def _lf_prompt_messages(system: str, prompt: str) -> list[dict[str, str]]:
    messages = []
    if system.strip():
        messages.append({"role": "system", "content": _clean(system)})
    messages.append({"role": "user", "content": IMAGE_PLACEHOLDER + _clean(prompt)})
    return messages


def llamafactory_sft_row(s: SftSample, out_dir: Path, image_paths: ImagePaths) -> dict[str, Any]:
    messages = _lf_prompt_messages(s.system, s.prompt)
    messages.append({"role": "assistant", "content": _clean(s.response)})
    return {"messages": messages, "images": [_image_ref(s.image_path, out_dir, image_paths)]}


def llamafactory_dpo_row(p: DpoPair, out_dir: Path, image_paths: ImagePaths) -> dict[str, Any]:
    return {
        "messages": _lf_prompt_messages(p.system, p.prompt),
        "chosen": {"role": "assistant", "content": _clean(p.chosen)},
        "rejected": {"role": "assistant", "content": _clean(p.rejected)},
        "images": [_image_ref(p.image_path, out_dir, image_paths)],
    }


def llamafactory_dataset_info(sft_file: str, dpo_file: str, name_prefix: str) -> dict[str, Any]:
    """Our `dataset_info.json`: two entries in LLaMA-Factory's sharegpt (OpenAI-role) form."""
    return {
        f"{name_prefix}_sft": {
            "file_name": sft_file,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": dict(SHAREGPT_TAGS),
        },
        f"{name_prefix}_dpo": {
            "file_name": dpo_file,
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {
                "messages": "messages",
                "chosen": "chosen",
                "rejected": "rejected",
                "images": "images",
            },
            "tags": dict(SHAREGPT_TAGS),
        },
    }


def _llamafactory_readme(info: LlamaFactoryExport) -> str:
    by_type = "\n".join(f"| `{t}` | {n} |" for t, n in sorted(info.dpo_rows_by_type.items()))
    return f"""# LLaMA-Factory export

| dataset | file | rows |
|---|---|---|
| `{info.sft_dataset}` | `{info.sft_file.name}` | {info.sft_rows} |
| `{info.dpo_dataset}` (`"ranking": true`) | `{info.dpo_file.name}` | {info.dpo_rows} |

DPO pairs by type:

| pair type | rows |
|---|---|
{by_type or "| (none) | 0 |"}

Image paths are {info.image_paths}{" to this folder" if info.image_paths == "relative" else ""}.

## Use it

`dataset_info.json` here is ours and names only these two datasets. Point LLaMA-Factory at this
folder in the training YAML:

```yaml
dataset_dir: {info.out_dir.as_posix()}
dataset: {info.sft_dataset}      # or {info.dpo_dataset} with `stage: dpo`
```

Relative image paths resolve against `media_dir`, which defaults to `dataset_dir`.

## Merge into another registry

Do not let a tool rewrite either file in place. Merge into a copy, review, then move it:

```sh
jq -s '.[0] * .[1]' LLaMA-Factory/data/dataset_info.json {info.out_dir.as_posix()}/dataset_info.json > merged.json
```

Then make each `file_name` reach these files (an absolute path or a symlink) and either export
with `image_paths="absolute"` or set `media_dir: {info.out_dir.as_posix()}`.
"""


def write_llamafactory(
    sft: Sequence[SftSample],
    dpo: Sequence[DpoPair],
    out_dir: Path,
    *,
    image_paths: ImagePaths = "relative",
    pair_types: Collection[PairType] | None = None,
    name_prefix: str = "lpt",
) -> LlamaFactoryExport:
    """LLaMA-Factory ShareGPT JSON for SFT and DPO, plus our own `dataset_info.json`.

    `pair_types` keeps only those DPO pair types (default: all, compactness O>O_O included).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sft_rows = _sorted_unique(sft, "sample_id")
    dpo_rows = _sorted_unique(filter_pairs(dpo, pair_types), "pair_id")

    sft_file = out_dir / f"{name_prefix}_sft.json"
    dpo_file = out_dir / f"{name_prefix}_dpo.json"
    _atomic_write_text(
        sft_file, _dump_json([llamafactory_sft_row(s, out_dir, image_paths) for s in sft_rows])
    )
    _atomic_write_text(
        dpo_file, _dump_json([llamafactory_dpo_row(p, out_dir, image_paths) for p in dpo_rows])
    )
    info_file = _atomic_write_text(
        out_dir / DATASET_INFO_FILE,
        _dump_json(llamafactory_dataset_info(sft_file.name, dpo_file.name, name_prefix)),
    )
    result = LlamaFactoryExport(
        out_dir=out_dir,
        sft_file=sft_file,
        dpo_file=dpo_file,
        dataset_info=info_file,
        readme=out_dir / "LLAMAFACTORY_README.md",
        sft_dataset=f"{name_prefix}_sft",
        dpo_dataset=f"{name_prefix}_dpo",
        sft_rows=len(sft_rows),
        dpo_rows=len(dpo_rows),
        dpo_rows_by_type=dict(sorted(Counter(p.pair_type.value for p in dpo_rows).items())),
        image_paths=image_paths,
    )
    _atomic_write_text(result.readme, _llamafactory_readme(result))
    return result


# ---- HF datasets (TRL formats) ---------------------------------------------------------------


def _text_part(text: str) -> list[dict[str, str | None]]:
    return [{"type": "text", "text": _clean(text)}]


def trl_prompt(system: str, prompt: str) -> list[dict[str, Any]]:
    """System (if any) and user turns, the user turn led by one image placeholder."""
    messages: list[dict[str, Any]] = []
    if system.strip():
        messages.append({"role": "system", "content": _text_part(system)})
    messages.append(
        {"role": "user", "content": [{"type": "image", "text": None}, *_text_part(prompt)]}
    )
    return messages


def _hf_features() -> tuple[Any, Any]:
    from datasets import Features, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    message = {"role": Value("string"), "content": List(part)}
    string = Value("string")
    sft = Features(
        {
            "sample_id": string,
            "messages": List(message),
            "images": List(string),
            "label": string,
            "trace_id": string,
            "mcq_id": string,
            "image_id": string,
            "cot_id": string,
            "long_id": string,
        }
    )
    dpo = Features(
        {
            "pair_id": string,
            "prompt": List(message),
            "chosen": List(message),
            "rejected": List(message),
            "images": List(string),
            "pair_type": string,
            "mcq_id": string,
            "image_id": string,
            "chosen_id": string,
            "rejected_id": string,
        }
    )
    return sft, dpo


def _columns(rows: list[dict[str, Any]], names: Iterable[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


def _save_dataset_dict(columns: dict[str, list[Any]], features: Any, target: Path) -> None:
    from datasets import Dataset, DatasetDict

    dataset = DatasetDict({"train": Dataset.from_dict(columns, features=features)})
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        # an empty split would be saved as zero shards, which load_from_disk cannot read back
        num_shards = {"train": 1} if dataset["train"].num_rows == 0 else None
        dataset.save_to_disk(str(tmp), num_shards=num_shards)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _dataset_card(
    sft_rows: Sequence[SftSample], dpo_rows: Sequence[DpoPair], card_context: Mapping[str, str]
) -> str:
    labels = Counter(s.label.value for s in sft_rows)
    types = Counter(p.pair_type.value for p in dpo_rows)
    images = len({s.image_id for s in sft_rows} | {p.image_id for p in dpo_rows})
    mcqs = len({s.mcq_id for s in sft_rows} | {p.mcq_id for p in dpo_rows})
    label_table = "\n".join(f"| `{k}` | {v} |" for k, v in sorted(labels.items()))
    type_table = "\n".join(
        f"| `{k}` | {'compactness' if PairType(k).is_compactness else 'correctness'} | {v} |"
        for k, v in sorted(types.items())
    )
    context_table = "\n".join(
        f"| {_md_cell(k)} | `{_md_cell(v)}` |" for k, v in sorted(card_context.items())
    )
    return f"""---
language:
- en
pretty_name: LongPerceptualThoughts-style long CoT data
task_categories:
- image-text-to-text
- visual-question-answering
tags:
- synthetic
- chain-of-thought
- sft
- dpo
- trl
size_categories:
- {_size_category(len(sft_rows) + len(dpo_rows))}
---

# LongPerceptualThoughts-style long chain-of-thought data

Synthetic SFT and DPO data for vision-language models, made by the `lpt` pipeline after
LongPerceptualThoughts (arXiv 2504.15362): multiple-choice questions written from dense image
descriptions, short chains of thought from a VLM, and long chains of thought from a text-only
reasoner that continues each short one after a cue such as "Wait,". Every response has the form
`<think>…</think>\\n<answer>…</answer>`.

{len(sft_rows)} SFT rows and {len(dpo_rows)} DPO pairs over {images} images and {mcqs} questions.

## SFT (`sft`): rows by label

Labels: `O` short CoT correct; `O_O` correct short CoT, correct extension; `X_O` wrong short
CoT, corrected by the extension.

| label | rows |
|---|---|
{label_table or "| (none) | 0 |"}

## DPO (`dpo`): pairs by type

`A>B`: a trace labelled A is preferred to one labelled B on the same question.

| pair type | kind | rows |
|---|---|---|
{type_table or "| (none) | | 0 |"}

## How it was made

| what | value |
|---|---|
{context_table or "| (not recorded) | |"}

## Load it

```python
from datasets import List, Image, load_from_disk

sft = load_from_disk("<this folder>/sft")["train"]   # messages, images, ids
dpo = load_from_disk("<this folder>/dpo")["train"]   # prompt, chosen, rejected, images, pair_type
# drop the compactness pairs if you want correctness pairs only
dpo = dpo.filter(lambda row: row["pair_type"] != "O>O_O")
# images are file paths; decode them for a VLM trainer
dpo = dpo.cast_column("images", List(Image()))
```

`dpo` is TRL's conversational preference format (`prompt` = system + user message with an
image placeholder, `chosen` / `rejected` = one assistant message each), ready for
`trl.DPOTrainer`; `sft` has conversational `messages` for `trl.SFTTrainer`. The `*_id` columns
link every row to its image, question, short CoT and long CoT; `provenance.jsonl`, where
exported, adds the models and configs.
"""


def write_hf_datasets(
    sft: Sequence[SftSample],
    dpo: Sequence[DpoPair],
    out_dir: Path,
    *,
    card_context: Mapping[str, str],
    pair_types: Collection[PairType] | None = None,
    image_paths: ImagePaths = "absolute",
) -> Path:
    """`out_dir/sft` and `out_dir/dpo` (each a `DatasetDict` with a `train` split, saved with
    `save_to_disk`) and a dataset card `out_dir/README.md`. Returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sft_rows = _sorted_unique(sft, "sample_id")
    dpo_rows = _sorted_unique(filter_pairs(dpo, pair_types), "pair_id")
    sft_features, dpo_features = _hf_features()

    sft_dicts = [
        {
            "sample_id": s.sample_id,
            "messages": [
                *trl_prompt(s.system, s.prompt),
                {"role": "assistant", "content": _text_part(s.response)},
            ],
            "images": [_image_ref(s.image_path, out_dir, image_paths)],
            "label": s.label.value,
            "trace_id": s.trace_id,
            "mcq_id": s.mcq_id,
            "image_id": s.image_id,
            "cot_id": s.cot_id,
            "long_id": s.long_id,
        }
        for s in sft_rows
    ]
    dpo_dicts = [
        {
            "pair_id": p.pair_id,
            "prompt": trl_prompt(p.system, p.prompt),
            "chosen": [{"role": "assistant", "content": _text_part(p.chosen)}],
            "rejected": [{"role": "assistant", "content": _text_part(p.rejected)}],
            "images": [_image_ref(p.image_path, out_dir, image_paths)],
            "pair_type": p.pair_type.value,
            "mcq_id": p.mcq_id,
            "image_id": p.image_id,
            "chosen_id": p.chosen_id,
            "rejected_id": p.rejected_id,
        }
        for p in dpo_rows
    ]
    _save_dataset_dict(_columns(sft_dicts, sft_features), sft_features, out_dir / "sft")
    _save_dataset_dict(_columns(dpo_dicts, dpo_features), dpo_features, out_dir / "dpo")
    _atomic_write_text(out_dir / "README.md", _dataset_card(sft_rows, dpo_rows, card_context))
    return out_dir


# ---- LaCoT / LLaVA ---------------------------------------------------------------------------


def lacot_row(s: SftSample, out_dir: Path, image_paths: ImagePaths) -> dict[str, Any]:
    think, answer = split_response(s.response)
    return {
        "id": s.sample_id,
        "image": _image_ref(s.image_path, out_dir, image_paths),
        "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{_clean(s.prompt)}"},
            {"from": "reason", "value": _clean(think)},
            {"from": "gpt", "value": _clean(answer)},
        ],
    }


def write_lacot(
    sft: Sequence[SftSample],
    out_dir: Path,
    *,
    image_paths: ImagePaths = "relative",
    name_prefix: str = "lpt",
) -> Path:
    """LaCoT's SFT format, `{prefix}_lacot.json`: LLaVA-style rows with human / reason / gpt
    turns (reason = the think part, gpt = the answer part). Relative image paths are relative
    to `out_dir`: pass it as LaCoT's `--image_folder`. Returns the file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [lacot_row(s, out_dir, image_paths) for s in _sorted_unique(sft, "sample_id")]
    return _atomic_write_text(out_dir / f"{name_prefix}_lacot.json", _dump_json(rows))


# ---- provenance ------------------------------------------------------------------------------


def _trace_kind(label: str) -> Literal["short", "long"]:
    return "long" if "_" in label else "short"


def provenance_rows(
    sft: Sequence[SftSample], dpo: Sequence[DpoPair], run_info: Mapping[str, object]
) -> list[dict[str, Any]]:
    """One dict per exported row, sorted by (kind, row id)."""
    run = json.loads(json.dumps(dict(run_info), sort_keys=True, default=str))
    rows: list[dict[str, Any]] = []
    for s in _sorted_unique(sft, "sample_id"):
        rows.append(
            {
                "kind": "sft",
                "row_id": s.sample_id,
                "image_id": s.image_id,
                "image_path": s.image_path,
                "mcq_id": s.mcq_id,
                "trace_id": s.trace_id,
                "cot_id": s.cot_id,
                "long_id": s.long_id,
                "label": s.label.value,
                "run": run,
            }
        )
    for p in _sorted_unique(dpo, "pair_id"):
        chosen_label, rejected_label = p.pair_type.value.split(">")
        rows.append(
            {
                "kind": "dpo",
                "row_id": p.pair_id,
                "image_id": p.image_id,
                "image_path": p.image_path,
                "mcq_id": p.mcq_id,
                "pair_type": p.pair_type.value,
                "chosen_id": p.chosen_id,
                "chosen_label": chosen_label,
                "chosen_kind": _trace_kind(chosen_label),  # short: a cot_id; long: a long_id
                "rejected_id": p.rejected_id,
                "rejected_label": rejected_label,
                "rejected_kind": _trace_kind(rejected_label),
                "run": run,
            }
        )
    return rows


def write_provenance(
    sft: Sequence[SftSample],
    dpo: Sequence[DpoPair],
    out_dir: Path,
    *,
    run_info: Mapping[str, object],
) -> Path:
    """`out_dir/provenance.jsonl`: one line per exported row with its image, MCQ, short and long
    CoT ids (for DPO: the chosen and rejected trace ids), label or pair type, and `run_info`
    (models per role, config fingerprints). Pass the rows exactly as exported (after any
    `filter_pairs`)."""
    out_dir = Path(out_dir)
    lines = [
        json.dumps(row, ensure_ascii=False, sort_keys=True)
        for row in provenance_rows(sft, dpo, run_info)
    ]
    return _atomic_write_text(out_dir / PROVENANCE_FILE, "".join(line + "\n" for line in lines))
