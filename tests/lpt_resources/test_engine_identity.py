"""Engine identities stay what they were before the settings split by kind: the response
cache's folders and every code version over the repo's configs (a changed value would orphan
every cache entry and mark every stage stale). Regenerate the snapshot only on purpose."""

import json
from pathlib import Path

import pytest

from lpt.config import ENGINE_SETTINGS, OutputIdentity, PipelineConfig, engine_settings, load_config
from lpt_assets.versions import code_versions
from lpt_resources.cache import ResponseCache
from lpt_resources.engines.resource import ENGINE_RESOURCES, engine_resource

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("engine_identity_snapshot.json")
# Settings of every kind beyond the repo's configs: a revision on a server, vLLM's own keys.
EXTRA = {
    "openai-revision": {"kind": "openai", "model": "m", "base_url": "http://a:8000/v1", "revision": "abc"},
    "vllm-kwargs": {
        "kind": "vllm",
        "model": "org/m",
        "engine_kwargs": {"quantization": "awq", "x": 1.5},
        "limit_mm_per_prompt": {"image": 1},
    },
    "vllm-fp16": {"kind": "vllm", "model": "org/m", "dtype": "float16", "revision": "r1"},
    "transformers-gguf": {"model": "org/m", "gguf_file": "m.gguf", "dtype": "bf16"},
}


def identities() -> dict:
    configs = {
        p.relative_to(ROOT).as_posix(): load_config(p)
        for p in [ROOT / "lpt.toml", *sorted((ROOT / "configs").glob("*.toml"))]
    }
    for name, engine in EXTRA.items():
        configs[name] = PipelineConfig.model_validate(
            {"engines": {"ask": engine, "vlm": engine, "reasoner": engine}, "judge": {"enabled": True}}
        )
    out = {}
    for name, config in configs.items():
        roles = {}
        for role in ("ask", "vlm", "reasoner", "judge"):
            settings = getattr(config.engines, role)
            roles[role] = [
                settings.output_identity(),
                ResponseCache("b", engine_resource(settings).cache_identity()).folder,
            ]
        out[name] = {"code_versions": code_versions(config), "engines": roles}
    return out


def test_cache_keys_and_code_versions_are_unchanged():
    assert identities() == json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("kind", sorted(ENGINE_SETTINGS))
def test_each_resource_takes_its_settings_fields_and_shares_their_identity(kind):
    settings_fields = set(ENGINE_SETTINGS[kind].model_fields) - {"kind"}
    assert set(ENGINE_RESOURCES[kind].model_fields) == settings_fields
    defaults = {name: ENGINE_SETTINGS[kind].model_fields[name].default for name in settings_fields}
    assert {name: ENGINE_RESOURCES[kind].model_fields[name].default for name in settings_fields} == defaults
    settings = engine_settings(kind=kind, model="org/m", revision="r")
    resource = engine_resource(settings)
    assert type(resource) is ENGINE_RESOURCES[kind] and resource.kind == kind
    assert resource.cache_identity() == OutputIdentity.of(settings).model_dump()
    assert settings.output_identity() == OutputIdentity.model_validate(resource.cache_identity()).model_dump_json()
