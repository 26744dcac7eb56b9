"""Exports by shard: LLaMA-Factory parts and dataset_info.json, HF Parquet parts and card (loaded
by `datasets`), LaCoT, provenance, and the batches that bind them (totals, redone and dropped
shards, a batch that dies before its commit, rebuilds)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from PIL import Image

from lpt.config import ExportConfig
from lpt.export import Exporter, Funnel, ShardRows, filter_pairs, part_paths, split_response
from lpt.export.lacot import lacot_row, untagged_prompt
from lpt.export.provenance import provenance_rows
from lpt.prompts import ANSWER_INSTRUCTIONS, VLM_SYSTEM
from lpt.records import DpoPair, Label, PairType, SftSample, stable_id

SYSTEM = VLM_SYSTEM
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
                prompt=f"What colour is the square? [{n}]\n(A) red\n(B) green\n(C) blue\n(D) pink\n\n"
                + ANSWER_INSTRUCTIONS["paren_letter"],
                response=_response(f"I look at the square {n}.\nWait, check again.", "(B)"),
            )
        )
    # given out of id order on purpose
    return list(reversed(rows))


@pytest.fixture
def dpo(images: dict[str, str]) -> list[DpoPair]:
    rows = []
    for n, pair_type in enumerate([PairType.O_GT_X, PairType.X_O_GT_X_X, PairType.O_GT_O_O, PairType.O_GT_O_O]):
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


def _export(root: Path, shards: dict[str, tuple[list, list]], **settings) -> Exporter:
    exporter = Exporter(str(root), ExportConfig(**settings), RUN_INFO)
    batch = exporter.begin()
    for shard, (sft_rows, dpo_rows) in shards.items():
        batch.put(ShardRows(shard=shard, sft=sft_rows, dpo=dpo_rows, funnel=Funnel(images=3, mcqs=6)))
    batch.commit({"after": 1})
    return exporter


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(root: Path, name: str):
    """As a user loads it; with a cache of its own (`datasets` keys a local folder's cache by its
    name and card, so equal-sized exports in other tests could share one)."""
    from datasets import load_dataset

    return load_dataset(str(root / "hf"), name, split="train", cache_dir=str(root / ".hf-cache"))


# ---- LLaMA-Factory ---------------------------------------------------------------------------


def test_llamafactory_parts_and_dataset_info_naming_the_folders(tmp_path, sft, dpo):
    _export(tmp_path, {"s-0": (sft[:2], dpo[:2]), "s-1": (sft[2:], dpo[2:])}, name_prefix="docci")
    folder = tmp_path / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["docci_sft"]["file_name"] == "sft" and "ranking" not in info["docci_sft"]
    assert info["docci_dpo"]["file_name"] == "dpo" and info["docci_dpo"]["ranking"] is True
    assert info["docci_dpo"]["columns"] == {
        "messages": "messages",
        "chosen": "chosen",
        "rejected": "rejected",
        "images": "images",
    }
    for entry in info.values():  # every file in the folder is a part LLaMA-Factory will load
        assert sorted(p.name for p in (folder / entry["file_name"]).iterdir()) == ["s-0.jsonl", "s-1.jsonl"]
    sft_rows = [row for part in sorted((folder / "sft").iterdir()) for row in _jsonl(part)]
    assert len(sft_rows) == 4
    for row in sft_rows + [row for part in (folder / "dpo").iterdir() for row in _jsonl(part)]:
        assert set(row) == set(info["docci_dpo" if "chosen" in row else "docci_sft"]["columns"].values())
        text = json.dumps(row)
        assert text.count("<image>") == len(row["images"]) == 1
        assert row["messages"][-1 if "chosen" in row else -2]["content"].startswith("<image>") or "chosen" not in row
        assert not os.path.isabs(row["images"][0]) and (folder / row["images"][0]).is_file()
    # the empty system message is left out, not written empty
    assert sum(row["messages"][0]["role"] == "user" for row in sft_rows) == 1
    readme = (folder / "LLAMAFACTORY_README.md").read_text()
    assert "dataset_dir" in readme and "jq" in readme and "template: qwen2_vl" in readme


def test_llamafactory_absolute_paths_and_pair_filter(tmp_path, sft, dpo, images):
    _export(tmp_path, {"s-0": (sft, dpo)}, image_paths="absolute", pair_types=("O>X", "X_O>X_X"))
    rows = _jsonl(tmp_path / "llamafactory" / "dpo" / "s-0.jsonl")
    assert len(rows) == 2
    assert {r["images"][0] for r in rows} <= set(images.values())
    assert len(filter_pairs(dpo, [t for t in PairType if not t.is_compactness])) == 2
    with pytest.raises(ValueError, match="unknown"):
        ExportConfig(pair_types=("O>Y",))


def test_stray_placeholder_and_duplicate_ids(tmp_path, sft, dpo):
    odd = sft[0].model_copy(update={"prompt": "Is <image> shown twice?\n\n" + ANSWER_INSTRUCTIONS["dot_letter"]})
    _export(tmp_path, {"s-0": ([odd], [])})
    (row,) = _jsonl(tmp_path / "llamafactory" / "sft" / "s-0.jsonl")
    assert json.dumps(row).count("<image>") == 1
    with pytest.raises(ValueError, match="duplicate"):
        _export(tmp_path / "b", {"s-0": (sft + sft[:1], dpo)})


# ---- HF datasets -----------------------------------------------------------------------------


def test_hf_configs_load_by_name_with_images_embedded(tmp_path, sft, dpo):
    _export(tmp_path, {"s-0": (sft[:2], dpo[:2]), "s-1": (sft[2:], dpo[2:])}, license="cc-by-4.0", hf_text=True)
    sft_ds, dpo_ds = _load(tmp_path, "sft"), _load(tmp_path, "dpo")
    assert sorted(sft_ds["sample_id"]) == sorted(s.sample_id for s in sft)
    for row in sft_ds:
        assert [m["role"] for m in row["messages"]][-2:] == ["user", "assistant"]
        assert [p["type"] for p in row["messages"][-2]["content"]] == ["image", "text"]
        assert row["images"][0].size == (8, 6)  # decoded from the Parquet's own bytes
    assert sorted(dpo_ds["pair_type"]) == sorted(p.pair_type.value for p in dpo)
    row = dpo_ds[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
    # the images survive a move: nothing points back at the files
    for image in Path(sft[0].image_path).parent.iterdir():
        image.unlink()
    assert _load(tmp_path, "dpo")[0]["images"][0].size == (8, 6)
    # text-only configs: no image part, no images column, no placeholder
    text = _load(tmp_path, "dpo_text")
    assert "images" not in text.column_names
    assert all(isinstance(m["content"], str) and "<image>" not in m["content"] for r in text for m in r["prompt"])


def test_hf_card_metadata(tmp_path, sft, dpo):
    _export(tmp_path, {"s-0": (sft, dpo)}, license="cc-by-4.0")
    card = (tmp_path / "hf" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-4.0"
    assert {c["config_name"]: c["data_files"][0]["path"] for c in front["configs"]} == {
        "sft": "sft/*.parquet",
        "dpo": "dpo/*.parquet",
    }
    assert "image-text-to-text" in front["task_categories"] and front["size_categories"] == ["n<1K"]
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in front["dataset_info"]} == {"sft": 4, "dpo": 4}
    assert "| `O>O_O` | compactness | 2 |" in card and "| `X_O` | 1 |" in card
    assert "| images (validated captions) | 3 |" in card and "| MCQs | 6 |" in card  # the funnel
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in card and 'load_dataset("<this folder or repo>", "dpo"' in card


def test_hf_recipe_then_reload_and_a_new_shard_is_seen(tmp_path, sft, dpo):
    exporter = _export(tmp_path, {"s-0": (sft[:2], dpo[:2])})
    before = sorted((tmp_path / "hf").rglob("*"))
    kept = _load(tmp_path, "dpo").filter(lambda row: row["pair_type"] != "O>X")
    assert kept.num_rows == 1
    assert sorted((tmp_path / "hf").rglob("*")) == before  # no cache files beside the data
    batch = exporter.begin()
    batch.put(ShardRows(shard="s-1", sft=sft[2:], dpo=dpo[2:]))
    batch.commit({"after": 2})
    assert _load(tmp_path, "dpo").num_rows == 4  # `datasets`' cache follows the card's sizes


def test_hf_paths_option(tmp_path, sft, dpo, images):
    _export(tmp_path, {"s-0": (sft, dpo)}, hf_images="paths")
    row = _load(tmp_path, "sft")[0]
    assert row["images"][0].size == (8, 6)
    import pyarrow.parquet as pq

    stored = pq.read_table(tmp_path / "hf" / "sft" / "s-0.parquet").column("images").to_pylist()
    assert {value[0]["path"] for value in stored} <= set(images.values())
    assert all(value[0]["bytes"] is None for value in stored)


def test_hf_images_are_stored_once_per_part(tmp_path, sft):
    import numpy as np

    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(noisy)
    rows = [
        s.model_copy(update={"image_path": str(noisy), "sample_id": f"{s.sample_id}-{k}"})
        for s in sft
        for k in range(5)
    ]
    _export(tmp_path, {"s-0": (rows, [])})
    assert (tmp_path / "hf" / "sft" / "s-0.parquet").stat().st_size < 2 * noisy.stat().st_size  # 20 rows, one image


# ---- LaCoT -----------------------------------------------------------------------------------


def test_lacot_instruction_matches_the_target(tmp_path, sft):
    _export(tmp_path, {"s-0": (sft, [])}, lacot_image_root=str(tmp_path))
    rows = json.loads((tmp_path / "lacot" / "s-0.json").read_text())
    by_id = {s.sample_id: s for s in sft}
    assert [r["id"] for r in rows] == sorted(by_id)
    for row in rows:
        assert set(row) == {"id", "image", "conversations"}
        assert row["image"].startswith("images/") and (tmp_path / row["image"]).is_file()
        assert [t["from"] for t in row["conversations"]] == ["human", "reason", "gpt"]
        human, reason, gpt = (t["value"] for t in row["conversations"])
        assert human.startswith("<image>\n") and "tags" not in human and "<think>" not in human
        assert human.endswith("Give the letter of your choice in parentheses, like (X).")
        assert reason.startswith("I look at the square") and "<think>" not in reason and "</think>" not in reason
        assert gpt == "(B)"
    kept = lacot_row(sft[0], str(tmp_path), keep_tags=True)
    human, reason, gpt = (t["value"] for t in kept["conversations"])
    assert "answer tags" in human and "<think>" in human  # the instructions that ask for the tags
    assert reason.startswith("<think>\n") and reason.endswith("</think>") and gpt == "<answer>(B)</answer>"
    with pytest.raises(ValueError, match="answer instruction"):
        untagged_prompt("no instruction here")


def test_split_response():
    assert split_response("<think>\na\nb\n</think>\n<answer>(C)</answer>") == ("a\nb", "(C)")
    with pytest.raises(ValueError):
        split_response("no tags here")


# ---- provenance ------------------------------------------------------------------------------


def test_provenance_matches_rows(tmp_path, sft, dpo):
    _export(tmp_path, {"s-0": (sft, dpo)}, pair_types=("O>X", "X_O>X_X"))
    lines = _jsonl(tmp_path / "provenance" / "s-0.jsonl")
    kept = filter_pairs(dpo, [PairType.O_GT_X, PairType.X_O_GT_X_X])
    assert [(r["kind"], r["row_id"]) for r in lines] == sorted(
        [("sft", s.sample_id) for s in sft] + [("dpo", p.pair_id) for p in kept], key=lambda k: (k[0] != "sft", k[1])
    )
    by_sample = {s.sample_id: s for s in sft}
    for line in lines:
        assert line["run"] == RUN_INFO and line["shard"] == "s-0"
        if line["kind"] == "sft":
            s = by_sample[line["row_id"]]
            assert (line["image_id"], line["mcq_id"], line["cot_id"], line["long_id"], line["label"]) == (
                s.image_id,
                s.mcq_id,
                s.cot_id,
                s.long_id,
                s.label.value,
            )
    xo = next(line for line in lines if line.get("pair_type") == "X_O>X_X")
    assert (xo["chosen_kind"], xo["rejected_kind"]) == ("long", "long")
    assert provenance_rows(list(reversed(sft)), [], RUN_INFO) == provenance_rows(sft, [], RUN_INFO)


# ---- batches: growth by shard ----------------------------------------------------------------


def _totals(root: Path):
    return json.loads((root / ".lpt" / "state.json").read_text())["totals"]


def test_redone_shard_replaces_its_parts_and_dropped_shard_has_none(tmp_path, sft, dpo):
    exporter = _export(tmp_path, {"s-0": (sft[:2], dpo[:2]), "s-1": (sft[2:], dpo[2:])})
    batch = exporter.begin()
    assert not batch.rebuild
    batch.put(ShardRows(shard="s-0", sft=sft[:1], dpo=[]))  # redone: fewer rows, no pairs
    assert batch.drop("s-1")
    result = batch.commit({"after": 5})
    assert result.written == ["s-0"] and result.dropped == ["s-1"]
    assert _load(tmp_path, "sft").num_rows == 1
    assert not [p for p in tmp_path.rglob("s-1.*") if ".lpt" not in p.parts]
    assert not (tmp_path / "llamafactory" / "dpo" / "s-0.jsonl").exists()
    info = json.loads((tmp_path / "llamafactory" / "dataset_info.json").read_text())
    assert list(info) == ["lpt_sft"]  # an empty folder would fail LLaMA-Factory's loader
    totals = _totals(tmp_path)
    assert (totals["shards"], totals["sft_by_label"], totals["dpo_by_type"]) == (1, {sft[0].label.value: 1}, {})
    assert exporter.state().cursor == {"after": 5}


def test_a_batch_that_dies_before_commit_is_redone_exactly(tmp_path, sft, dpo):
    exporter = _export(tmp_path, {"s-0": (sft[:2], dpo[:2])})
    committed = _totals(tmp_path)
    dying = exporter.begin()
    dying.put(ShardRows(shard="s-0", sft=sft, dpo=dpo))
    dying.put(ShardRows(shard="s-1", sft=sft[:1], dpo=[]))  # ... and no commit: killed here
    assert _totals(tmp_path) == committed
    again = exporter.begin()
    again.put(ShardRows(shard="s-0", sft=sft, dpo=dpo))
    again.put(ShardRows(shard="s-1", sft=sft[:1], dpo=[]))
    again.commit({"after": 9})
    clean = Exporter(str(tmp_path / "clean"), ExportConfig(), RUN_INFO)
    batch = clean.begin()
    batch.put(ShardRows(shard="s-0", sft=sft, dpo=dpo))
    batch.put(ShardRows(shard="s-1", sft=sft[:1], dpo=[]))
    batch.commit({"after": 9})
    assert _totals(tmp_path) == _totals(tmp_path / "clean")
    for part in ("hf/README.md", "hf/dpo/s-0.parquet", "provenance/s-0.jsonl"):
        assert (tmp_path / part).read_bytes() == (tmp_path / "clean" / part).read_bytes()


def test_new_settings_rebuild_and_sweep_what_is_not_a_part(tmp_path, sft, dpo):
    root = tmp_path / "out"
    exporter = _export(root, {"s-0": (sft, dpo), "s-1": (sft[:1], [])}, hf_text=True)
    (root / "hf" / "sft" / "dataset_dict.json").write_text("{}")  # an older layout's file
    changed = Exporter(str(root), ExportConfig(), RUN_INFO)
    assert exporter.state() is not None and changed.state() is None  # other settings: rebuild
    batch = changed.begin()
    assert batch.rebuild and sorted(batch.known_shards()) == ["s-0", "s-1"]
    batch.put(ShardRows(shard="s-0", sft=sft, dpo=dpo))
    result = batch.commit({"after": 3})
    assert result.dropped == ["s-1"]
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".lpt" not in p.parts}
    indexes = {
        "hf/README.md",
        "lacot/README.md",
        "provenance/README.md",
        "llamafactory/LLAMAFACTORY_README.md",
        "llamafactory/dataset_info.json",
    }
    parts = {
        path for key, path in part_paths("s-0").items() if not key.endswith("_text") and key != "lacot_bin"
    }  # no scores
    assert files == indexes | parts


def test_same_rows_give_the_same_bytes_and_files_are_ordinary(tmp_path, sft, dpo):
    previous = os.umask(0o022)
    try:
        _export(tmp_path / "a", {"s-0": (sft, dpo)})
    finally:
        os.umask(previous)
    _export(tmp_path / "b", {"s-0": (list(reversed(sft)), list(reversed(dpo)))})
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file() and ".lpt" not in path.parts and path.suffix != ".md":  # READMEs name their folder
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    assert stat.S_IMODE((tmp_path / "a" / "llamafactory" / "sft" / "s-0.jsonl").stat().st_mode) == 0o644
    assert not list((tmp_path / "a" / ".lpt" / "staging").iterdir())  # nothing half-written left
    with pytest.raises(ValueError, match="cannot name"):
        part_paths("../evil")


def test_a_batch_another_batch_committed_over_binds_nothing(tmp_path, sft, dpo):
    exporter = _export(tmp_path, {"s-0": (sft[:2], dpo[:2])})
    first, second = exporter.begin(), exporter.begin()
    first.put(ShardRows(shard="s-1", sft=sft[2:], dpo=dpo[2:]))
    assert first.commit({"after": 2}).state is not None
    second.put(ShardRows(shard="s-2", sft=sft[:1], dpo=[]))
    assert second.commit({"after": 3}).state is None  # its totals would miss s-1: the caller rebuilds
    assert exporter.state().cursor == {"after": 2}


# ---- LaCoT rewards and BiN log -----------------------------------------------------------------


def test_lacot_rows_carry_rewards_and_the_bin_log_is_lacots_schema(tmp_path, sft, dpo):
    from lpt.records import McqScores

    scored = McqScores(
        mcq_id="m-1",
        image_id="img0",
        cot_ids=[sft[0].cot_id, "other-cot"],
        rationales=["Red.", "Green."],
        solutions=["(A)", "(B)", "(C)", "(D)"],
        likelihoods=[[-1.0, -0.5, -2.0, -3.0], [-1.5, -0.7, -2.0, -3.0]],
        rewards=[-0.5, -0.7],
        option_scores=[-1.25, -0.6, -2.0, -3.0],
        gold_letter="B",
        bin_letter="B",
        margin=0.0,
        best_index=0,
        suspect=False,
    )
    exporter = Exporter(str(tmp_path), ExportConfig(), RUN_INFO)
    batch = exporter.begin()
    batch.put(ShardRows(shard="s-0", sft=sft, dpo=dpo, scores=[scored]))
    batch.put(ShardRows(shard="s-1", sft=sft[:1], dpo=[]))
    batch.commit({"after": 1})
    rows = {r["id"]: r for r in json.loads((tmp_path / "lacot" / "s-0.json").read_text())}
    assert rows[sft[0].sample_id]["reward"] == -0.5
    assert all("reward" not in r for i, r in rows.items() if i != sft[0].sample_id and sft[0].cot_id not in i)
    [log] = json.loads((tmp_path / "lacot" / "bin" / "s-0.json").read_text())
    assert log == {
        "id": "m-1",
        "rationals": ["Red.", "Green."],
        "solutions": ["(A)", "(B)", "(C)", "(D)"],
        "likelihoods": [[-1.0, -0.5, -2.0, -3.0], [-1.5, -0.7, -2.0, -3.0]],
        "best_index": 0,
    }
    assert not (tmp_path / "lacot" / "bin" / "s-1.json").exists()  # a shard without scores has no log
    assert "bin/" in (tmp_path / "lacot" / "README.md").read_text()
