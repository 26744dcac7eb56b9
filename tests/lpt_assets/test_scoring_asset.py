"""The rationale_scores asset on a real Dagster instance with a tiny random-weight Qwen2 as the
VLM (reading the description: a text model), on stored MCQs and short CoTs whose preferred
answer is known; a rerun answers every scoring request from the response cache."""

from dagster import AssetKey, instance_for_test, materialize

from lpt.config import PipelineConfig
from lpt.records import MCQ, Caption, Presentation, PresentedMCQ, SimpleCot
from lpt.scoring import McqScores
from lpt_assets.assets.scoring import build_scoring_assets
from lpt_assets.definitions import engine_resource
from lpt_assets.summary import render, summarize
from lpt_resources.storage import ParquetStore

OPTIONS = ["zebra crossing", "_functions_functions_functions", "quiet violet harbour", "seven"]


def _stored_shard(store: ParquetStore) -> None:
    store.write("captions", "s1", [Caption(image_id="img1", source="t", split="train", image_path="/none.png",
                                           description="A sign.", width=8, height=8)], Caption)
    item = PresentedMCQ(
        mcq=MCQ(mcq_id="m1", image_id="img1", question="What does the sign say?", options=OPTIONS,
                answer=OPTIONS[2], reasoning_type="recognition"),
        presentation=Presentation(option_style="paren", answer_style="option_text", options=OPTIONS, gold_letter="C"),
    )
    store.write("mcqs", "s1", [item], PresentedMCQ)
    thinks = ["_functions_functions_functions_functions", "A quiet violet harbour, seven zebras."]
    store.write("simple_cots", "s1", [
        SimpleCot(cot_id=f"c{i}", mcq_id="m1", image_id="img1", sample_index=i, text=f"\n{t}\n</think>\n<answer>{OPTIONS[2]}</answer>",
                  finish_reason="stop", prompt_tokens=10, completion_tokens=5, model="vlm", stand_in=True)
        for i, t in enumerate(thinks)
    ], SimpleCot)


def test_rationale_scores_asset_scores_streams_and_caches(tmp_path, tiny_qwen2_path):
    config = PipelineConfig.model_validate({
        "storage": str(tmp_path / "data"),
        "think": {"caption_stand_in": True},
        "scoring": {"enabled": True, "suspect_margin": 0.05},
        "engines": {"vlm": {"model": str(tiny_qwen2_path), "batch_size": 8}},
    })
    store = ParquetStore(base=config.storage)
    _stored_shard(store)
    [asset] = build_scoring_assets(config)
    assert build_scoring_assets(config.model_copy(update={"scoring": config.scoring.model_copy(update={"enabled": False})})) == []
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
            [scores] = store.read("rationale_scores", "s1", McqScores)
            assert (scores.bin_letter, scores.gold_letter, scores.suspect) == ("B", "C", True)
            assert len(scores.likelihoods) == 2 and metadata["suspect_keys"] == ["m1"]
            assert metadata["bin_accuracy"] == 0.0 and metadata["mcqs_scored"] == 1
        summary = summarize(store, instance, ["s1"], config)
        assert summary["scoring"]["suspect_keys"] == ["m1"] and summary["scoring"]["bin_accuracy"] == 0.0
        assert summary["engines"]["rationale_scores"]["requests_sent"] == 0
        assert "BiN accuracy vs gold 0.0; suspect keys 1 (m1)" in render(summary)
    assert sent == [(8, 0), (0, 8)]  # 2 rationales x 4 options, then all from the cache


def test_curation_ranks_by_reward_and_holds_out_suspect_keys(tmp_path, tiny_qwen2_path):
    """SFT and DPO read the shard's scores: `hold_out_suspect_keys` leaves the disputed MCQ
    out; otherwise `rank_by_reward` picks its best-rewarded short CoT."""
    from lpt.records import LongCot, SftSample
    from lpt_assets.assets.curate import build_curation_assets

    base = {
        "storage": str(tmp_path / "data"),
        "think": {"caption_stand_in": True},
        "scoring": {"enabled": True, "suspect_margin": 0.05},
        "engines": {"vlm": {"model": str(tiny_qwen2_path), "batch_size": 8}},
    }
    store = ParquetStore(base=base["storage"])
    _stored_shard(store)
    store.write("long_cots", "s1", [], LongCot)
    scoring_config = PipelineConfig.model_validate(base)
    resources = {"store": store, "vlm_engine": engine_resource(scoring_config.engines.vlm)}
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("shards", ["s1"])
        assert materialize(build_scoring_assets(scoring_config), partition_key="s1", instance=instance, resources=resources).success
        [scores] = store.read("rationale_scores", "s1", McqScores)
        chosen = {}
        for hold_out in (True, False):
            config = PipelineConfig.model_validate(
                {**base, "select": {"sft_per_mcq": 1, "rank_by_reward": True, "hold_out_suspect_keys": hold_out}}
            )
            curation = build_curation_assets(config)
            assert materialize(curation, partition_key="s1", instance=instance, resources={"store": store}, selection=curation).success
            chosen[hold_out] = [s.cot_id for s in store.read("sft_samples", "s1", SftSample)]
    best = max(zip(scores.rewards, scores.cot_ids))[1]
    assert chosen == {True: [], False: [best]}
