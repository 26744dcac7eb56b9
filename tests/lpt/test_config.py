from lpt.config import load_config


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text('storage = "data"\n[think]\ncaption_stand_in = true\n')
    config = load_config(tmp_path / "c.toml")
    assert config.storage == str(tmp_path / "data")
    assert config.think.caption_stand_in is True


def test_environment_points_one_role_at_another_engine(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('[engines.reasoner]\nmodel = "from-file"\nbatch_size = 8\n')
    monkeypatch.setenv("LPT_REASONER_KIND", "openai")
    monkeypatch.setenv("LPT_REASONER_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("LPT_REASONER_MAX_CONCURRENCY", "64")
    monkeypatch.setenv("LPT_VLM_ENGINE_KWARGS", '{"max_num_batched_tokens": 8192}')
    monkeypatch.setenv("LPT_VLM_LIMIT_MM_PER_PROMPT", '{"image": 1}')
    config = load_config(tmp_path / "c.toml")
    reasoner = config.engines.reasoner
    assert (reasoner.kind, reasoner.base_url, reasoner.max_concurrency) == ("openai", "http://127.0.0.1:8000/v1", 64)
    assert reasoner.model == "from-file" and reasoner.batch_size == 8
    assert config.engines.vlm.engine_kwargs == {"max_num_batched_tokens": 8192}
    assert config.engines.vlm.limit_mm_per_prompt == {"image": 1}
    assert config.engines.ask.kind == "transformers"


def test_stage_fingerprints_change_with_any_setting():
    base = load_config()
    changed = base.think_harder.model_copy(update={"cues": ("Wait,",)})
    assert changed.fingerprint() != base.think_harder.fingerprint()
    assert base.ask.fingerprint() == load_config().ask.fingerprint()
