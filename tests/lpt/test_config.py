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
    monkeypatch.setenv("LPT_VLM_KIND", "vllm")
    monkeypatch.setenv("LPT_VLM_ENGINE_KWARGS", '{"max_num_batched_tokens": 8192}')
    monkeypatch.setenv("LPT_VLM_LIMIT_MM_PER_PROMPT", '{"image": 1}')
    config = load_config(tmp_path / "c.toml")
    reasoner = config.engines.reasoner
    assert (reasoner.kind, reasoner.base_url, reasoner.max_concurrency) == ("openai", "http://127.0.0.1:8000/v1", 64)
    assert reasoner.model == "from-file" and not hasattr(reasoner, "batch_size")  # a transformers key, ignored
    assert config.engines.vlm.engine_kwargs == {"max_num_batched_tokens": 8192}
    assert config.engines.vlm.limit_mm_per_prompt == {"image": 1}
    assert config.engines.ask.kind == "transformers"


def test_stage_fingerprints_change_with_any_setting():
    base = load_config()
    changed = base.think_harder.model_copy(update={"cues": ("Wait,",)})
    assert changed.fingerprint() != base.think_harder.fingerprint()
    assert base.ask.fingerprint() == load_config().ask.fingerprint()


def test_every_shipped_config_loads_and_names_files_that_exist():
    """Each config in configs/ (and the bundled lpt.toml) validates, and every config file its
    comments point at ships too."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [root / "lpt.toml", *sorted((root / "configs").glob("*.toml"))]
    assert {p.name for p in files} >= {"lpt.toml", "paper.toml", "paper-vllm.toml", "paper-openai.toml"}
    for path in files:
        config = load_config(path)
        assert config.engines.vlm.model, path
        for named in re.findall(r"configs/[\w.-]+\.toml", path.read_text()):
            assert (root / named).exists(), f"{path.name} points at {named}, which does not exist"
    gpu = load_config(root / "configs" / "paper-vllm.toml")
    assert {gpu.engines.ask.kind, gpu.engines.vlm.kind, gpu.engines.reasoner.kind} == {"vllm"}
    assert gpu.engines.vlm.limit_mm_per_prompt == {"image": 1} and not gpu.think.caption_stand_in
    served = load_config(root / "configs" / "paper-openai.toml")
    assert {served.engines.vlm.kind, served.engines.reasoner.kind} == {"openai"}
    assert served.engines.vlm.supports_images


def test_where_a_server_runs_is_not_part_of_what_it_answers():
    """Moving a `vllm serve` to another host keeps the cache and every code version after it."""
    from lpt.config import engine_settings

    here = engine_settings(kind="openai", model="m", base_url="http://a:8000/v1")
    there = here.model_copy(update={"base_url": "http://b:9000/v1", "max_concurrency": 128})
    assert here.output_identity() == there.output_identity()
    assert here.output_identity() != here.model_copy(update={"revision": "abc123"}).output_identity()


def test_a_misspelt_value_names_the_file_the_key_and_the_accepted_values(tmp_path):
    import pytest

    from lpt.config import ConfigError

    (tmp_path / "c.toml").write_text('[engines.vlm]\nkind = "vlllm"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "c.toml")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'c.toml'}: engines.vlm.kind = 'vlllm'")
    assert "did you mean 'vllm'?" in message and "transformers, openai, vllm" in message


def test_a_misspelt_key_names_the_file_and_the_key_it_means(tmp_path, monkeypatch):
    import pytest

    from lpt.config import ConfigError

    (tmp_path / "c.toml").write_text('[automation]\nschedule_enbled = false\n[engines.ask]\nmodle = "x"\n')
    with pytest.raises(
        ConfigError,
        match=r"c\.toml: unknown key 'engines\.ask\.modle'; did you mean 'engines\.ask\.model'\? \(and 1 more problem\)",
    ):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("[automation]\nschedule_enbled = false\n")
    with pytest.raises(
        ConfigError,
        match=r"c\.toml: unknown key 'automation\.schedule_enbled'; did you mean 'automation\.schedule_enabled'\?$",
    ):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('[engines.ask]\nbatch_size = "lots"\n')
    with pytest.raises(
        ConfigError, match=r"c\.toml: engines\.ask\.batch_size = 'lots': Input should be a valid integer"
    ):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("")
    monkeypatch.setenv("LPT_ASK_KIND", "openia")
    with pytest.raises(
        ConfigError, match=r"^\$LPT_ASK_KIND: engines\.ask\.kind = 'openia' is not accepted; did you mean 'openai'\?"
    ):
        load_config(tmp_path / "c.toml")


def test_a_config_that_is_not_there_or_not_toml_is_named(tmp_path, monkeypatch):
    import pytest

    from lpt.config import ConfigError

    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config(tmp_path / "nope.toml")
    monkeypatch.setenv("LPT_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml: no such config file"):
        load_config()
    (tmp_path / "c.toml").write_text("[ask\n")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        load_config(tmp_path / "c.toml")


def test_the_backfill_schedule_runs_by_default_only_in_the_gpu_configs():
    """On the CPU model an hourly backfill would start long unplanned runs for every shard
    merely registered: the bundled config leaves it stopped, the GPU configs run it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert load_config(root / "lpt.toml").automation.schedule_enabled is False
    for path in sorted((root / "configs").glob("paper*.toml")):
        assert load_config(path).automation.schedule_enabled is True, path.name


def test_scoring_needs_an_engine_that_scores_and_top_k_needs_scoring():
    """A vLLM server scores (its prompt log-probabilities); other servers are refused at load,
    naming the role and the setting; ranking stage 3 by reward needs the scores."""
    import pytest
    from pydantic import ValidationError

    from lpt.config import PipelineConfig

    served = {"kind": "openai", "model": "m", "base_url": "http://h:8000/v1"}
    assert PipelineConfig.model_validate({"scoring": {"enabled": True}, "engines": {"vlm": served}}).scoring.enabled
    with pytest.raises(ValidationError, match=r"engines\.vlm\.server_kind = vllm \(a sglang server"):
        PipelineConfig.model_validate(
            {"scoring": {"enabled": True}, "engines": {"vlm": {**served, "server_kind": "sglang"}}}
        )
    with pytest.raises(ValidationError, match=r"expand_top_k_by_reward ranks short CoTs by their rationale scores"):
        PipelineConfig.model_validate({"think_harder": {"expand_top_k_by_reward": 2}})
    on = PipelineConfig.model_validate({"scoring": {"enabled": True}, "think_harder": {"expand_top_k_by_reward": 2}})
    assert on.think_harder.expand_top_k_by_reward == 2


def test_an_engine_variable_that_is_not_json_or_no_field_is_named_or_ignored(tmp_path, monkeypatch):
    """A dict field's variable that is not JSON is named; a variable naming no engine field,
    or no role, is not the config's (as LPT_CELERY_BROKER is the executor's)."""
    import pytest

    from lpt.config import ConfigError

    (tmp_path / "c.toml").write_text("")
    monkeypatch.setenv("LPT_VLM_KINDD", "vllm")
    monkeypatch.setenv("LPT_CELERY_BROKER", "redis://h:6379/0")
    assert load_config(tmp_path / "c.toml").engines.vlm.kind == "transformers"
    monkeypatch.setenv("LPT_VLM_ENGINE_KWARGS", "{max_num_seqs: 4}")
    with pytest.raises(ConfigError, match=r"^\$LPT_VLM_ENGINE_KWARGS: not a JSON object \("):
        load_config(tmp_path / "c.toml")
