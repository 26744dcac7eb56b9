"""LLaMA-Factory 0.9.5 reads the export through its own `dataset_info.json` (the entries name
part folders) and data pipeline with the `qwen2_vl` template, and trains one step of SFT and one
of DPO on a tiny Qwen2.5-VL. Runs in .venv-llamafactory (make test-consumers)."""

import json
import sys
from pathlib import Path

import pytest

from tests.consumers.conftest import run_python

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"
sys.path.insert(0, str(STAND_INS))  # LLaMA-Factory imports torchaudio (see stand_ins/)

IMAGE_PAD, VISION_START = 151655, 151652


def _args(export: dict, model: Path, stage: str, out: Path) -> dict:
    return {
        "stage": stage,
        "do_train": True,
        "model_name_or_path": str(model),
        "dataset_dir": str(Path(export["exports"]) / "llamafactory"),
        "dataset": f"lpt_{stage}",
        "template": "qwen2_vl",
        "finetuning_type": "full",
        "cutoff_len": 4096,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "max_steps": 1,
        "learning_rate": 1e-5,
        "report_to": "none",
        "save_strategy": "no",
        "preprocessing_num_workers": None,
        "dataloader_num_workers": 0,
        **({"pref_beta": 0.1, "pref_loss": "sigmoid"} if stage == "dpo" else {}),
    }


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_data_pipeline_matches_image_tokens_to_images_in_every_row(small_export, tiny_vl, tmp_path, stage):
    from PIL import Image

    from tests.consumers.image_only_processor import image_only_processor, patch_auto_processor

    patch_auto_processor(tiny_vl)
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(_args(small_export, tiny_vl, stage, tmp_path / "out"))
    tokenizer_module = load_tokenizer(model_args)
    assert tokenizer_module["processor"] is not None
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(
        template, model_args, data_args, training_args, stage="rm" if stage == "dpo" else stage, **tokenizer_module
    )["train_dataset"]
    assert len(dataset) == small_export[f"{stage}_rows"]  # every exported row, none cut or dropped

    image_processor = image_only_processor(tiny_vl).image_processor
    media = Path(small_export["exports"]) / "llamafactory"
    token_lists = ("input_ids",) if stage == "sft" else ("chosen_input_ids", "rejected_input_ids")
    for row in dataset:
        (image,) = row["images"]
        with Image.open(image if Path(image).is_absolute() else media / image) as picture:
            grid = image_processor(images=[picture.convert("RGB")], return_tensors="np")["image_grid_thw"][0]
        expected = int(grid.prod()) // image_processor.merge_size**2
        for name in token_lists:
            ids = row[name]
            assert ids.count(VISION_START) == 1, name
            assert ids.count(IMAGE_PAD) == expected, name


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_one_training_step(small_export, tiny_vl, tmp_path, stage):
    args = _args(small_export, tiny_vl, stage, tmp_path / "out")
    (tmp_path / "args.json").write_text(json.dumps(args))
    done = run_python(["tests/consumers/llamafactory/train_step.py", str(tmp_path / "args.json")], [STAND_INS])
    assert done.returncode == 0, done.stderr[-6000:]
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert results["epoch"] > 0 and results["train_loss"] == results["train_loss"]  # a finite loss
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
