"""Shared test fixtures: offline mode and tiny real-architecture models built from configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from tests.tiny_models import tiny_qwen2, tiny_qwen2_5_vl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory):
    """A folder with a random-weight Qwen2ForCausalLM (hidden 128, 2 layers, head_dim 64)."""
    return tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "model")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_path(tmp_path_factory):
    """A folder with a random-weight Qwen2_5_VLForConditionalGeneration and its image processor config."""
    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2-5-vl") / "model")
