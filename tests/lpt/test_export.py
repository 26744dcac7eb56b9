"""Exports: LLaMA-Factory ShareGPT + dataset_info.json, HF datasets (TRL), LaCoT, provenance."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from lpt.export import (
    LlamaFactoryExport,
    filter_pairs,
    split_response,
    write_hf_datasets,
    write_lacot,
    write_llamafactory,
    write_provenance,
)
from lpt.records import DpoPair, Label, PairType, SftSample, stable_id

SYSTEM = "Reason inside <think> </think> tags, then answer inside <answer> </answer> tags."
RUN_INFO = {
    "models": {"ask": "gpt-4o-mini", "vlm": "Qwen/Qwen2.5-VL-7B-Instruct", "reasoner": "r1-32b"},
    "configs": {"think": "abc123", "think_harder": "def456"},
}


def _response(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = {}
    for i, colour in enumerate(["red", "green", "blue"]):
        path = folder / f"img{i}.png"
        Image.new("RGB", (8, 6), colour).save(path)
        paths[f"img{i}"] = str(path)
    return paths


@pytest.fixture
def sft(images: dict[str, str]) -> list[SftSample]:
    rows = []
    specs = [
        ("img0", Label.O, None, SYSTEM),
        ("img0", Label.X_O, "long-a", SYSTEM),
        ("img1", Label.O_O, "long-b", ""),  # no system message
        ("img2", Label.O, None, SYSTEM),
    ]
    for n, (image_id, label, long_id, system) in enumerate(specs):
        mcq_id = stable_id("mcq", image_id)
        cot_id = stable_id("cot", image_id, n)
        trace_id = long_id or cot_id
        rows.append(
            SftSample(
                sample_id=stable_id("sft", trace_id),
                trace_id=trace_id,
                label=label,
                mcq_id=mcq_id,
                image_id=image_id,
                cot_id=cot_id,
                long_id=long_id,
                image_path=images[image_id],
                system=system,
                prompt=f"What colour is the square?\n(A) red\n(B) green\n(C) blue\n(D) pink [{n}]",
                response=_response(f"I look at the square {n}.\nWait, check again.", "(B)"),
            )
        )
    # given out of id order on purpose
    return list(reversed(rows))


@pytest.fixture
def dpo(images: dict[str, str]) -> list[DpoPair]:
    rows = []
    for n, pair_type in enumerate(
        [PairType.O_GT_X, PairType.X_O_GT_X_X, PairType.O_GT_O_O, PairType.O_GT_O_O]
    ):
        image_id = f"img{n % 3}"
        rows.append(
            DpoPair(
                pair_id=stable_id("pair", n),
                pair_type=pair_type,
                mcq_id=stable_id("mcq", image_id),
                image_id=image_id,
                chosen_id=stable_id("chosen", n),
                rejected_id=stable_id("rejected", n),
                image_path=images[image_id],
                system=SYSTEM,
                prompt=f"Which colour? (A) red (B) green [{n}]",
                chosen=_response("short and right", "(A)"),
                rejected=_response("long and wrong, wait, hmm", "(B)"),
            )
        )
    return rows


# ---- LLaMA-Factory ---------------------------------------------------------------------------


def _check_images(row: dict, out_dir: Path) -> None:
    user = [m for m in row["messages"] if m["role"] == "user"]
    assert len(user) == 1
    assert user[0]["content"].startswith("<image>")
    placeholders = sum(m["content"].count("<image>") for m in row["messages"])
    for key in ("chosen", "rejected"):
        if key in row:
            placeholders += row[key]["content"].count("<image>")
    assert placeholders == len(row["images"]) == 1
    for image in row["images"]:
        assert not os.path.isabs(image)
        assert (out_dir / image).is_file()


def test_llamafactory_files_load_with_the_right_shape(tmp_path, sft, dpo):
    out = tmp_path / "exports" / "llamafactory"
    result = write_llamafactory(sft, dpo, out)
    assert isinstance(result, LlamaFactoryExport)
    assert (result.sft_rows, result.dpo_rows) == (4, 4)
    assert result.dpo_rows_by_type == {"O>O_O": 2, "O>X": 1, "X_O>X_X": 1}

    sft_rows = json.loads(result.sft_file.read_text())
    assert result.sft_file == out / "lpt_sft.json"
    assert len(sft_rows) == 4
    for row in sft_rows:
        assert set(row) == {"messages", "images"}
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["system", "user", "assistant"], ["user", "assistant"])
        assert all(set(m) == {"role", "content"} for m in row["messages"])
        assert row["messages"][-1]["content"].startswith("<think>\n")
        _check_images(row, out)
    # the empty system message is left out, not written empty
    assert sum(row["messages"][0]["role"] == "user" for row in sft_rows) == 1

    dpo_rows = json.loads(result.dpo_file.read_text())
    assert len(dpo_rows) == 4
    for row in dpo_rows:
        assert set(row) == {"messages", "chosen", "rejected", "images"}
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert row["chosen"]["role"] == row["rejected"]["role"] == "assistant"
        assert row["chosen"]["content"] != row["rejected"]["content"]
        _check_images(row, out)


def test_llamafactory_rows_sorted_by_id(tmp_path, sft, dpo):
    result = write_llamafactory(sft, dpo, tmp_path)
    by_id = sorted(sft, key=lambda s: s.sample_id)
    rows = json.loads(result.sft_file.read_text())
    assert [r["messages"][-1]["content"] for r in rows] == [s.response for s in by_id]
    pairs = sorted(dpo, key=lambda p: p.pair_id)
    rows = json.loads(result.dpo_file.read_text())
    assert [r["messages"][-1]["content"] for r in rows] == ["<image>" + p.prompt for p in pairs]


def test_llamafactory_is_deterministic(tmp_path, sft, dpo):
    a = write_llamafactory(sft, dpo, tmp_path / "a", image_paths="absolute")
    b = write_llamafactory(list(reversed(sft)), list(reversed(dpo)), tmp_path / "b",
                           image_paths="absolute")
    assert a.sft_file.read_bytes() == b.sft_file.read_bytes()
    assert a.dpo_file.read_bytes() == b.dpo_file.read_bytes()


def test_dataset_info_names_both_files(tmp_path, sft, dpo):
    result = write_llamafactory(sft, dpo, tmp_path, name_prefix="docci")
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert result.dataset_info == tmp_path / "dataset_info.json"
    assert set(info) == {"docci_sft", "docci_dpo"}
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    sft_entry, dpo_entry = info["docci_sft"], info["docci_dpo"]
    assert sft_entry["file_name"] == "docci_sft.json"
    assert (tmp_path / sft_entry["file_name"]).is_file()
    assert sft_entry["formatting"] == "sharegpt"
    assert not sft_entry.get("ranking", False)
    assert sft_entry["columns"] == {"messages": "messages", "images": "images"}
    assert sft_entry["tags"] == tags
    assert dpo_entry["file_name"] == "docci_dpo.json"
    assert (tmp_path / dpo_entry["file_name"]).is_file()
    assert dpo_entry["formatting"] == "sharegpt"
    assert dpo_entry["ranking"] is True
    assert dpo_entry["columns"] == {
        "messages": "messages",
        "chosen": "chosen",
        "rejected": "rejected",
        "images": "images",
    }
    assert dpo_entry["tags"] == tags
    # the columns named in dataset_info.json are exactly the keys of the rows
    for entry in (sft_entry, dpo_entry):
        rows = json.loads((tmp_path / entry["file_name"]).read_text())
        assert all(set(r) == set(entry["columns"].values()) for r in rows)
    readme = result.readme.read_text()
    assert "dataset_dir" in readme and "jq" in readme


def test_dataset_info_is_ours_and_replaced_atomically(tmp_path, sft, dpo):
    (tmp_path / "dataset_info.json").write_text('{"stale": {"file_name": "old.json"}}')
    write_llamafactory(sft, dpo, tmp_path)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"lpt_sft", "lpt_dpo"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_llamafactory_absolute_paths(tmp_path, sft, dpo, images):
    result = write_llamafactory(sft, dpo, tmp_path / "out", image_paths="absolute")
    rows = json.loads(result.sft_file.read_text()) + json.loads(result.dpo_file.read_text())
    for row in rows:
        assert os.path.isabs(row["images"][0])
        assert Path(row["images"][0]).is_file()
    assert {r["images"][0] for r in rows} <= {os.path.abspath(p) for p in images.values()}


def test_pair_types_filter(tmp_path, sft, dpo):
    result = write_llamafactory(
        sft, dpo, tmp_path, pair_types=[PairType.O_GT_X, PairType.X_O_GT_X_X]
    )
    assert result.dpo_rows == 2
    assert result.dpo_rows_by_type == {"O>X": 1, "X_O>X_X": 1}
    assert len(json.loads(result.dpo_file.read_text())) == 2
    # no compactness pairs when they are filtered out; strings work as well as enums
    kept = filter_pairs(dpo, [t for t in PairType if not t.is_compactness])
    assert all(not p.pair_type.is_compactness for p in kept) and len(kept) == 2
    assert len(filter_pairs(dpo, ["O>O_O"])) == 2
    assert filter_pairs(dpo, None) == dpo
    assert write_llamafactory(sft, dpo, tmp_path, pair_types=[]).dpo_rows == 0


def test_duplicate_ids_are_refused(tmp_path, sft, dpo):
    with pytest.raises(ValueError, match="duplicate"):
        write_llamafactory(sft + sft[:1], dpo, tmp_path)


def test_stray_placeholder_in_text_does_not_break_the_count(tmp_path, sft, dpo):
    odd = sft[0].model_copy(update={"prompt": "Is <image> shown twice?"})
    result = write_llamafactory([odd], [], tmp_path)
    (row,) = json.loads(result.sft_file.read_text())
    assert sum(m["content"].count("<image>") for m in row["messages"]) == 1


# ---- HF datasets -----------------------------------------------------------------------------


def test_hf_datasets_load_with_trl_columns(tmp_path, sft, dpo):
    from datasets import load_from_disk

    context = {"vlm model": "Qwen/Qwen2.5-VL-7B-Instruct", "think config": "abc123"}
    out = write_hf_datasets(sft, dpo, tmp_path / "hf", card_context=context)
    assert out == tmp_path / "hf"

    sft_ds = load_from_disk(str(out / "sft"))["train"]
    assert sft_ds.num_rows == 4
    assert {"messages", "images", "sample_id", "label", "mcq_id", "image_id", "cot_id",
            "long_id", "trace_id"} <= set(sft_ds.column_names)
    assert sft_ds["sample_id"] == sorted(s.sample_id for s in sft)
    for row in sft_ds:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-2:] == ["user", "assistant"]
        user = row["messages"][-2]["content"]
        assert [p["type"] for p in user] == ["image", "text"]
        assert sum(p["type"] == "image" for m in row["messages"] for p in m["content"]) == len(
            row["images"]
        )
        assert all(Path(p).is_file() for p in row["images"])
        assert row["messages"][-1]["content"][0]["text"].startswith("<think>")

    dpo_ds = load_from_disk(str(out / "dpo"))["train"]
    assert dpo_ds.num_rows == 4
    assert {"prompt", "chosen", "rejected", "images", "pair_type", "pair_id", "chosen_id",
            "rejected_id", "mcq_id", "image_id"} <= set(dpo_ds.column_names)
    row = dpo_ds[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [p["type"] for p in row["prompt"][1]["content"]] == ["image", "text"]
    assert [m["role"] for m in row["chosen"]] == ["assistant"]
    assert [m["role"] for m in row["rejected"]] == ["assistant"]
    assert sorted(dpo_ds["pair_type"]) == sorted(p.pair_type.value for p in dpo)

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and card.count("---\n") >= 2
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in card and "load_from_disk" in card
    assert "| `O>O_O` | compactness | 2 |" in card
    assert "| `X_O` | 1 |" in card


def test_hf_datasets_rewrite_in_place_and_empty_dpo(tmp_path, sft, dpo):
    from datasets import load_from_disk

    out = tmp_path / "hf"
    write_hf_datasets(sft, dpo, out, card_context={})
    write_hf_datasets(sft[:2], [], out, card_context={})
    assert load_from_disk(str(out / "sft"))["train"].num_rows == 2
    dpo_ds = load_from_disk(str(out / "dpo"))["train"]
    assert dpo_ds.num_rows == 0 and "prompt" in dpo_ds.column_names
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "dpo", "sft"]


def test_hf_images_decode_as_the_card_says(tmp_path, sft, dpo):
    from datasets import Image as HFImage
    from datasets import List, load_from_disk

    out = write_hf_datasets(sft, dpo, tmp_path / "hf", card_context={})
    ds = load_from_disk(str(out / "dpo"))["train"].cast_column("images", List(HFImage()))
    assert ds[0]["images"][0].size == (8, 6)


# ---- LaCoT -----------------------------------------------------------------------------------


def test_lacot_shape(tmp_path, sft):
    out = tmp_path / "lacot"
    path = write_lacot(sft, out)
    assert path == out / "lpt_lacot.json"
    rows = json.loads(path.read_text())
    assert [r["id"] for r in rows] == sorted(s.sample_id for s in sft)
    by_id = {s.sample_id: s for s in sft}
    for row in rows:
        assert set(row) == {"id", "image", "conversations"}
        assert (out / row["image"]).is_file()
        assert [t["from"] for t in row["conversations"]] == ["human", "reason", "gpt"]
        assert all(set(t) == {"from", "value"} for t in row["conversations"])
        human, reason, gpt = (t["value"] for t in row["conversations"])
        assert human == "<image>\n" + by_id[row["id"]].prompt
        assert reason.startswith("I look at the square") and "Wait, check again." in reason
        assert "<think>" not in reason and "</think>" not in reason
        assert gpt == "(B)"


def test_split_response():
    assert split_response("<think>\na\nb\n</think>\n<answer>(C)</answer>") == ("a\nb", "(C)")
    with pytest.raises(ValueError):
        split_response("no tags here")


# ---- provenance ------------------------------------------------------------------------------


def test_provenance_matches_rows(tmp_path, sft, dpo):
    kept = filter_pairs(dpo, [PairType.O_GT_X, PairType.X_O_GT_X_X])
    path = write_provenance(sft, kept, tmp_path, run_info=RUN_INFO)
    assert path == tmp_path / "provenance.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(sft) + len(kept)
    assert [(r["kind"], r["row_id"]) for r in lines] == sorted(
        [("sft", s.sample_id) for s in sft] + [("dpo", p.pair_id) for p in kept],
        key=lambda k: (k[0] != "sft", k[1]),
    )
    by_sample = {s.sample_id: s for s in sft}
    by_pair = {p.pair_id: p for p in kept}
    for line in lines:
        assert line["run"] == RUN_INFO
        if line["kind"] == "sft":
            s = by_sample[line["row_id"]]
            assert (line["image_id"], line["image_path"], line["mcq_id"]) == (
                s.image_id, s.image_path, s.mcq_id)
            assert (line["cot_id"], line["long_id"], line["label"]) == (
                s.cot_id, s.long_id, s.label.value)
        else:
            p = by_pair[line["row_id"]]
            assert (line["chosen_id"], line["rejected_id"]) == (p.chosen_id, p.rejected_id)
            assert line["pair_type"] == p.pair_type.value
            assert line["mcq_id"] == p.mcq_id and line["image_id"] == p.image_id
    xo = next(line for line in lines if line.get("pair_type") == "X_O>X_X")
    assert (xo["chosen_kind"], xo["rejected_kind"]) == ("long", "long")
    ox = next(line for line in lines if line.get("pair_type") == "O>X")
    assert (ox["chosen_kind"], ox["rejected_kind"]) == ("short", "short")

    # deterministic: input order does not matter
    again = write_provenance(list(reversed(sft)), list(reversed(kept)), tmp_path / "b",
                             run_info=RUN_INFO)
    assert again.read_bytes() == path.read_bytes()


def test_exports_are_readable_by_others_like_ordinary_files(tmp_path, sft, dpo):
    previous = os.umask(0o022)
    try:
        result = write_llamafactory(sft, dpo, tmp_path / "lf")
        folder = write_hf_datasets(sft, dpo, tmp_path / "hf", card_context={})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(result.sft_file.stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / "dpo").stat().st_mode) == 0o755
