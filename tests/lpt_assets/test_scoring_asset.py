"""The rationale_scores asset on a real Dagster instance with a tiny random-weight Qwen2 as the
VLM (reading the description: a text model), on stored MCQs and short CoTs whose preferred
answer is known; a rerun answers every scoring request from the response cache."""

from dagster import AssetKey, instance_for_test, materialize

from lpt.config import PipelineConfig
from lpt.records import MCQ, Presentation, PresentedMCQ
from lpt.stages import ScoringStage
from lpt.tables import CAPTIONS, LONG_COTS, MCQS, RATIONALE_SCORES, SFT_SAMPLES, SIMPLE_COTS
from lpt_assets.assets.generate import build_engine_stage_assets, stage_asset
from lpt_assets.summary import render, summarize
from lpt_resources.engines.resource import engine_resource
from lpt_resources.storage import ParquetStore
from tests.builders import caption, simple_cot

OPTIONS = ["zebra crossing", "_functions_functions_functions", "quiet violet harbour", "seven"]


def _stored_shard(store: ParquetStore) -> None:
    store.write(CAPTIONS, "s1", [caption("A sign.", image_path="/none.png")])
    item = PresentedMCQ(
        mcq=MCQ(
            mcq_id="m1",
            image_id="img1",
            question="What does the sign say?",
            options=OPTIONS,
            answer=OPTIONS[2],
            reasoning_type="recognition",
        ),
        presentation=Presentation(option_style="paren", answer_style="option_text", options=OPTIONS, gold_letter="C"),
    )
    store.write(MCQS, "s1", [item])
    thinks = ["_functions_functions_functions_functions", "A quiet violet harbour, seven zebras."]
    shorts = [
        simple_cot(f"c{i}", think, OPTIONS[2], i, prompt_tokens=10, completion_tokens=5, stand_in=True)
        for i, think in enumerate(thinks)
    ]
    store.write(SIMPLE_COTS, "s1", shorts)


def test_rationale_scores_asset_scores_streams_and_caches(tmp_path, tiny_qwen2_path):
    config = PipelineConfig.model_validate(
        {
            "storage": str(tmp_path / "data"),
            "think": {"caption_stand_in": True},
            "scoring": {"enabled": True, "suspect_margin": 0.05},
            "engines": {"vlm": {"model": str(tiny_qwen2_path), "batch_size": 8}},
        }
    )
    store = ParquetStore(base=config.storage)
    _stored_shard(store)
    asset = stage_asset(ScoringStage(config), config)
    scoring_off = config.model_copy(update={"scoring": config.scoring.model_copy(update={"enabled": False})})
    assert asset.key in {a.key for a in build_engine_stage_assets(config)}
    assert asset.key not in {a.key for a in build_engine_stage_assets(scoring_off)}
    resources = {"store": store, "vlm_engine": engine_resource(config.engines.vlm)}
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("shards", ["s1"])
        sent = []
        for _ in range(2):
            assert materialize([asset], partition_key="s1", instance=instance, resources=resources).success
            event = instance.get_latest_materialization_event(AssetKey("rationale_scores"))
            metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            sent.append((metadata["requests_sent"], metadata["cache_hits"]))
            [scores] = store.read(RATIONALE_SCORES, "s1")
            assert (scores.bin_letter, scores.gold_letter, scores.suspect) == ("B", "C", True)
            assert len(scores.likelihoods) == 2 and metadata["suspect_keys"] == ["m1"]
            assert metadata["bin_accuracy"] == 0.0 and metadata["mcqs_scored"] == 1
        summary = summarize(store, instance, ["s1"], config)
        assert summary["scoring"]["suspect_keys"] == ["m1"] and summary["scoring"]["bin_accuracy"] == 0.0
        assert summary["engines"]["rationale_scores"]["requests_sent"] == 0
        assert "BiN accuracy vs gold 0.0; suspect keys 1 (m1)" in render(summary)
        assert "\n  rationale_scores requests_sent=0, cache_hits=8" in render(summary)  # its own column
    assert sent == [(8, 0), (0, 8)]  # 2 rationales x 4 options, then all from the cache


def test_curation_ranks_by_reward_and_holds_out_suspect_keys(tmp_path, tiny_qwen2_path):
    """SFT and DPO read the shard's scores: `hold_out_suspect_keys` leaves the disputed MCQ
    out; otherwise `rank_by_reward` picks its best-rewarded short CoT."""
    from lpt_assets.assets.curate import build_curation_assets

    base = {
        "storage": str(tmp_path / "data"),
        "think": {"caption_stand_in": True},
        "scoring": {"enabled": True, "suspect_margin": 0.05},
        "engines": {"vlm": {"model": str(tiny_qwen2_path), "batch_size": 8}},
    }
    store = ParquetStore(base=base["storage"])
    _stored_shard(store)
    store.write(LONG_COTS, "s1", [])
    scoring_config = PipelineConfig.model_validate(base)
    resources = {"store": store, "vlm_engine": engine_resource(scoring_config.engines.vlm)}
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("shards", ["s1"])
        assert materialize(
            [stage_asset(ScoringStage(scoring_config), scoring_config)],
            partition_key="s1",
            instance=instance,
            resources=resources,
        ).success
        [scores] = store.read(RATIONALE_SCORES, "s1")
        chosen = {}
        for hold_out in (True, False):
            config = PipelineConfig.model_validate(
                {**base, "select": {"sft_per_mcq": 1, "rank_by_reward": True, "hold_out_suspect_keys": hold_out}}
            )
            curation = build_curation_assets(config)
            assert materialize(
                curation, partition_key="s1", instance=instance, resources={"store": store}, selection=curation
            ).success
            chosen[hold_out] = [s.cot_id for s in store.read(SFT_SAMPLES, "s1")]
    best = max(zip(scores.rewards, scores.cot_ids))[1]
    assert chosen == {True: [], False: [best]}


def test_stage_3_expands_only_the_best_rewarded_short_cots(tmp_path, tiny_qwen2_path):
    """`expand_top_k_by_reward = 1`: the reasoner (a real HTTP server) gets one request for the
    best-rewarded right short CoT and one for the best-rewarded wrong one, by the scores the
    tiny VLM wrote; with 0 it gets the other two as well. Stage 3's version follows the scores
    only when it ranks by them."""
    import json

    from lpt_assets.versions import code_versions
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        base = {
            "storage": str(tmp_path / "data"),
            "think": {"caption_stand_in": True},
            "think_harder": {"sampling": {"n": 1, "max_tokens": 8}, "retry_max_tokens": 8},
            "scoring": {"enabled": True},
            "engines": {
                "vlm": {"model": str(tiny_qwen2_path), "batch_size": 8},
                "reasoner": {"kind": "openai", "model": "fake-reasoner", "base_url": server.base_url},
            },
        }
        store = ParquetStore(base=base["storage"])
        _stored_shard(store)  # two short CoTs answering the gold option
        wrong = [
            simple_cot(f"w{i}", t, a, 2 + i, prompt_tokens=10, completion_tokens=5, stand_in=True)
            for i, (t, a) in enumerate([("Seven, I count.", OPTIONS[3]), ("A zebra crossing, clearly.", OPTIONS[0])])
        ]
        store.write(SIMPLE_COTS, "s1", store.read(SIMPLE_COTS, "s1") + wrong)
        top_1 = PipelineConfig.model_validate(
            {**base, "think_harder": {**base["think_harder"], "expand_top_k_by_reward": 1}}
        )
        resources = {
            "store": store,
            "vlm_engine": engine_resource(top_1.engines.vlm),
            "reasoner_engine": engine_resource(top_1.engines.reasoner),
        }
        (tmp_path / "home").mkdir()
        with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
            instance.add_dynamic_partitions("shards", ["s1"])
            assert materialize(
                [stage_asset(ScoringStage(top_1), top_1)], partition_key="s1", instance=instance, resources=resources
            ).success
            [scores] = store.read(RATIONALE_SCORES, "s1")
            reward = dict(zip(scores.cot_ids, scores.rewards))
            best = {max(["c0", "c1"], key=reward.get), max(["w0", "w1"], key=reward.get)}
            thinks = {c.cot_id: c.text.split("</think>")[0].strip() for c in store.read(SIMPLE_COTS, "s1")}
            sent: list[list[str]] = []
            extended: list[set[str]] = []
            for config in (top_1, PipelineConfig.model_validate(base)):
                before = len(server.requests)
                stage_3 = [a for a in build_engine_stage_assets(config) if a.key == AssetKey("long_cots")]
                assert materialize(stage_3, partition_key="s1", instance=instance, resources=resources).success
                shown = [json.dumps(body["messages"]) for body in server.requests[before:]]
                sent.append(
                    sorted(cot for cot, think in thinks.items() for text in shown if json.dumps(think)[1:-1] in text)
                )
                extended.append({r.cot_id for r in store.read(LONG_COTS, "s1")})
    # k = 1: two requests, the best of each label; all: the other two (the first two from the cache)
    assert sent == [sorted(best), sorted({"c0", "c1", "w0", "w1"} - best)]
    assert extended == [best, {"c0", "c1", "w0", "w1"}]

    def versions(config: PipelineConfig, margin: float) -> str:
        return code_versions(
            config.model_copy(update={"scoring": config.scoring.model_copy(update={"suspect_margin": margin})})
        )["long_cots"]

    assert versions(top_1, 0.1) != versions(top_1, 0.3)
    all_k = PipelineConfig.model_validate(base)
    assert versions(all_k, 0.1) == versions(all_k, 0.3)


def test_rationale_scores_over_a_vllm_server_stream_and_cache(tmp_path):
    """The scoring stage on an OpenAI-compatible vLLM server (a real HTTP server speaking
    vLLM's /tokenize and prompt_logprobs): every (rationale, option) is scored once, and a
    rerun answers all of them from the response cache without a call."""
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        config = PipelineConfig.model_validate(
            {
                "storage": str(tmp_path / "data"),
                "think": {"caption_stand_in": True},
                "scoring": {"enabled": True},
                "engines": {
                    "vlm": {"kind": "openai", "server_kind": "vllm", "model": "fake-vlm", "base_url": server.base_url}
                },
            }
        )
        store = ParquetStore(base=config.storage)
        _stored_shard(store)
        resources = {"store": store, "vlm_engine": engine_resource(config.engines.vlm)}
        (tmp_path / "home").mkdir()
        with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
            instance.add_dynamic_partitions("shards", ["s1"])
            sent, calls = [], []
            for _ in range(2):
                before = len(server.requests)
                assert materialize(
                    [stage_asset(ScoringStage(config), config)],
                    partition_key="s1",
                    instance=instance,
                    resources=resources,
                ).success
                metadata = instance.get_latest_materialization_event(
                    AssetKey("rationale_scores")
                ).asset_materialization.metadata
                sent.append((metadata["requests_sent"].value, metadata["cache_hits"].value))
                calls.append(server.paths[before:].count("/v1/chat/completions"))
            [scores] = store.read(RATIONALE_SCORES, "s1")
    assert sent == [(8, 0), (0, 8)] and calls == [8, 0]
    assert len(scores.likelihoods) == 2 and all(len(row) == 4 and all(v < 0 for v in row) for row in scores.likelihoods)
