"""One `lpt_pipeline` run on vLLM (CPU build) with tiny random-weight models for the roles.

A GPU holds one model at a time: each generation stage gives its engine back when its step
ends, so with a different model per role no two `vllm.LLM` are ever alive at once, and with
one model for every role it loads once and serves all three stages.
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import vllm  # noqa: E402,F401 - these run in .venv-vllm (`make test-vllm`): no vLLM is a failure
from dagster import AssetKey, instance_for_test  # noqa: E402

from lpt.config import PipelineConfig  # noqa: E402
from lpt_assets.cli import run_pipeline  # noqa: E402
from lpt_assets.registry import register_source  # noqa: E402
from lpt_resources.engines import vllm_engine as ve  # noqa: E402
from lpt_resources.storage import ParquetStore  # noqa: E402
from tests.tiny_models import tiny_qwen2  # noqa: E402

ENGINE = dict(kind="vllm", dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0)


class LiveLLMs:
    """Counts `vllm.LLM` instances built and shut down in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alive = self.most = self.built = 0
        build, shutdown = ve._build_llm, ve.shutdown_llm

        def counted_build(settings):
            llm = build(settings)
            self.built += 1
            self.alive += 1
            self.most = max(self.most, self.alive)
            return llm

        def counted_shutdown(llm):
            shutdown(llm)
            self.alive -= 1

        monkeypatch.setattr(ve, "_build_llm", counted_build)
        monkeypatch.setattr(ve, "shutdown_llm", counted_shutdown)


def _config(root, models: dict[str, str]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "storage": str(root / "data"),
            "exports": str(root / "exports"),
            "ask": {"questions_per_image": 2, "sampling": {"n": 1, "max_tokens": 800}},
            "think": {"caption_stand_in": True, "constrain_format": True, "sampling": {"n": 4, "max_tokens": 96}},
            "think_harder": {"constrain_format": True, "retry_max_tokens": 128, "sampling": {"n": 1, "max_tokens": 96}},
            # random weights write any word: no short CoT may be dropped for a leak word by chance
            "verify": {"leak_words": []},
            # random weights write nonsense (long JSON strings, long option texts: generous budgets);
            # the mechanics are the point
            "checks": {"enabled": False},
            "engines": {role: {**ENGINE, "model": model} for role, model in models.items()},
        }
    )


def _run(root, config: PipelineConfig) -> None:
    (root / "home").mkdir()
    with instance_for_test(temp_dir=str(root / "home")) as instance:
        registration = register_source("sample?limit=4&shard_size=2", ParquetStore(base=config.storage), instance)
        run_pipeline(instance, config, registration.shards)
        for stage in ("mcqs", "simple_cots", "long_cots"):
            assert instance.get_materialized_partitions(AssetKey(stage)) == set(registration.shards), stage


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    return {role: str(tiny_qwen2(root / role, seed=seed)) for seed, role in enumerate(("ask", "vlm", "reasoner"))}


def test_different_models_per_role_are_never_loaded_at_once(tmp_path, tiny_models, monkeypatch):
    live = LiveLLMs(monkeypatch)
    _run(tmp_path, _config(tmp_path, tiny_models))
    assert live.built == 3  # each stage loaded its own model, so each stage really generated
    assert live.most == 1, "two vllm.LLM were alive at once"
    assert live.alive == 0 and ve.loaded_engines() == {}


def test_one_model_for_every_role_loads_once(tmp_path, tiny_models, monkeypatch):
    live = LiveLLMs(monkeypatch)
    one = tiny_models["reasoner"]
    _run(tmp_path, _config(tmp_path, {"ask": one, "vlm": one, "reasoner": one}))
    assert live.built == 1, "the stages did not share the loaded model"
    assert live.alive == 0 and ve.loaded_engines() == {}
