"""TRL 1.16 and `datasets` on the export's HF folder, loaded by config name as the card says:
DPOTrainer and SFTTrainer one step each on a tiny Qwen2.5-VL (images decoded from the bytes in
the Parquet), and SFTTrainer one step on a tiny text Qwen2 with the text-only config. Runs in
.venv-trl (make test-consumers)."""

from pathlib import Path

import pytest


def _load(export: dict, name: str):
    from datasets import load_dataset

    return load_dataset(str(Path(export["exports"]) / "hf"), name, split="train")


def test_every_config_loads_by_name_with_every_row(small_export):
    sft, dpo = _load(small_export, "sft"), _load(small_export, "dpo")
    assert sorted(sft["sample_id"]) == small_export["sft_ids"]
    assert sorted(dpo["pair_id"]) == small_export["pair_ids"]
    for row in dpo:
        (image,) = row["images"]
        assert image.size[0] > 0 and image.mode  # a PIL image from the embedded bytes
        assert [part["type"] for part in row["prompt"][-1]["content"]] == ["image", "text"]
    text = _load(small_export, "dpo_text")
    assert "images" not in text.column_names
    assert all(isinstance(m["content"], str) and "<image>" not in m["content"] for row in text for m in row["prompt"])
    # the card's recipe, then a fresh load: nothing it wrote lands in the export folder
    before = sorted(p for p in (Path(small_export["exports"]) / "hf").rglob("*"))
    dpo.filter(lambda row: row["pair_type"] != "O>O_O")
    assert sorted(p for p in (Path(small_export["exports"]) / "hf").rglob("*")) == before
    assert _load(small_export, "dpo").num_rows == small_export["dpo_rows"]


def _model(path: Path):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def _common(out: Path) -> dict:
    return {
        "output_dir": str(out),
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
    }


@pytest.mark.parametrize("trainer", ["dpo", "sft"])
def test_one_step_on_a_tiny_qwen2_5_vl(small_export, tiny_vl, tmp_path, trainer):
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from tests.consumers.image_only_processor import image_only_processor

    processor = image_only_processor(tiny_vl)
    if trainer == "dpo":
        run = DPOTrainer(
            model=_model(tiny_vl),
            args=DPOConfig(**_common(tmp_path), max_length=4096),
            train_dataset=_load(small_export, "dpo"),
            processing_class=processor,
        )
    else:
        run = SFTTrainer(
            model=_model(tiny_vl),
            args=SFTConfig(**_common(tmp_path), max_length=4096),
            train_dataset=_load(small_export, "sft"),
            processing_class=processor,
        )
    result = run.train()
    assert run.state.global_step == 1
    assert result.training_loss == result.training_loss  # finite


def test_text_only_config_trains_a_text_model(small_export, tiny_text, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    run = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_text),
        args=SFTConfig(**_common(tmp_path), max_length=2048),
        train_dataset=_load(small_export, "sft_text"),
        processing_class=AutoTokenizer.from_pretrained(tiny_text),
    )
    run.train()
    assert run.state.global_step == 1
