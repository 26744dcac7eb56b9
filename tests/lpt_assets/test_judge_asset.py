"""The judge on a real Dagster instance with a tiny random-weight Qwen2 serving the reasoner's
settings (the judge's default): stored short and long CoTs are verified, judged under guided
decoding (so the random model's replies are still valid verdicts), and curated by the verdicts;
a rerun sends nothing; flag-only keeps every trace; without guided decoding the random model's
garbage is quarantined with its reason and kept unless the knob drops it."""

from collections import Counter

import pytest
from dagster import AssetKey, instance_for_test, materialize

from lpt.config import PipelineConfig
from lpt.judge import NO_VERDICT
from lpt.records import LongCot
from lpt.stages import JudgeStage
from lpt.tables import (
    CAPTIONS,
    DPO_PAIRS,
    JUDGE_VERDICTS,
    JUDGE_VERDICTS_QUARANTINE,
    LONG_COTS,
    MCQS,
    SFT_SAMPLES,
    SIMPLE_COTS,
    VERIFIED,
)
from lpt_assets.assets.curate import build_curation_assets
from lpt_assets.assets.generate import build_engine_stage_assets, stage_asset
from lpt_assets.summary import render, summarize
from lpt_resources.engines.resource import engine_resource
from lpt_resources.storage import ParquetStore
from tests.builders import caption, presented_mcq, simple_cot

SHORTS = {  # the MCQ: "What colour is the cap?" (A) Blue (B) Green (C) White (D) Red; gold B
    "c1": ("The cap on the bottle looks blue under the shop lights", "(A)"),
    "c2": ("The cap has the same green as the label around the neck of the bottle.", "(B)"),
}
LONGS = {  # long id -> (short CoT, continuation after the cue, answer)
    "l1": ("c1", "the label next to it is green and the cap matches it, so the cap is green.", "(B)"),
    "l2": ("c1", "looking again, the cap is clearly blue, like the sign behind the counter.", "(B)"),
    "l3": ("c1", "I am meant to speak only of the photo as if I could see it. The cap is green.", "(B)"),
    "l4": ("c1", "the cap is blue; the shop lights do not change that.", "(A)"),
    "l5": ("c2", "yes, the cap and the label share one shade of green.", "(B)"),
}


def _stored_shard(store: ParquetStore) -> None:
    store.write(CAPTIONS, "s1", [caption("A bottle with a green cap.")])
    store.write(MCQS, "s1", [presented_mcq()])
    shorts = [simple_cot(cot_id, think, answer, i) for i, (cot_id, (think, answer)) in enumerate(SHORTS.items())]
    store.write(SIMPLE_COTS, "s1", shorts)
    store.write(
        LONG_COTS,
        "s1",
        [
            LongCot(
                long_id=long_id,
                cot_id=cot_id,
                mcq_id="m1",
                image_id="img1",
                sample_index=0,
                short_think=SHORTS[cot_id][0].rstrip(".") + ".",
                separator=" ",
                cue="Wait,",
                continuation=f" {text}\n</think>\n<answer>{answer}</answer>",
                finish_reason="stop",
                attempts=1,
                prompt_tokens=90,
                completion_tokens=30,
                model="reasoner",
            )
            for long_id, (cot_id, text, answer) in LONGS.items()
        ],
    )


def _config(tmp_path, model, **judge) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "storage": str(tmp_path / "data"),
            "judge": {"enabled": True, "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 512}, **judge},
            "select": {"sft_per_mcq": 8, "self_correction_share": 1.0, "max_pairs_per_type_per_mcq": 8},
            "engines": {"reasoner": {"model": str(model), "batch_size": 8}},
        }
    )


def _run(config: PipelineConfig, store: ParquetStore, instance) -> dict:
    """Verify, judge and curate the shard; the judge's metadata."""
    assets = [*build_curation_assets(config), stage_asset(JudgeStage(config), config)]
    resources = {"store": store, "judge_engine": engine_resource(config.engines.judge)}
    assert materialize(assets, partition_key="s1", instance=instance, resources=resources).success
    event = instance.get_latest_materialization_event(AssetKey("judge_verdicts"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _selected(store: ParquetStore) -> tuple[set[str], set[str]]:
    sft = {s.trace_id for s in store.read(SFT_SAMPLES, "s1")}
    paired = {t for p in store.read(DPO_PAIRS, "s1") for t in (p.chosen_id, p.rejected_id)}
    return sft, paired


def test_judge_verdicts_drop_by_reason_cache_and_flag_only(tmp_path, tiny_qwen2_path):
    config = _config(tmp_path, tiny_qwen2_path)
    assert config.engines.judge == config.engines.reasoner  # one loaded model serves both roles
    judge_off = config.model_copy(update={"judge": config.judge.model_copy(update={"enabled": False})})
    assert AssetKey("judge_verdicts") in {a.key for a in build_engine_stage_assets(config)}
    assert AssetKey("judge_verdicts") not in {a.key for a in build_engine_stage_assets(judge_off)}
    store = ParquetStore(base=config.storage)
    _stored_shard(store)
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("shards", ["s1"])
        sent = []
        for _ in range(2):
            metadata = _run(config, store, instance)
            sent.append((metadata["requests_sent"], metadata["cache_hits"]))
        verified = {r.trace_id: r for r in store.read(VERIFIED, "s1")}
        assert {t: r.label.value for t, r in verified.items() if r.kept} == {
            "c1": "X",
            "c2": "O",
            "l1": "X_O",
            "l2": "X_O",
            "l3": "X_O",
            "l4": "X_X",
            "l5": "O_O",
        }
        verdicts = {v.trace_id: v for v in store.read(JUDGE_VERDICTS, "s1")}
        assert sorted(verdicts) == ["l1", "l2", "l3", "l4", "l5"]  # every kept long trace, no short one
        # guided decoding: even random weights write a verdict the parser reads
        assert all(v.error is None and v.consistent is not None for v in verdicts.values())
        assert store.read(JUDGE_VERDICTS_QUARANTINE, "s1") == []
        for v in verdicts.values():
            assert (
                v.findings
                == ["judge_inconsistent"] * (not v.consistent) + ["judge_setup_reference"] * v.setup_reference
            )
            assert v.drop_reason == (v.findings[0] if v.findings else None)
        dropped = {t for t, v in verdicts.items() if v.drop_reason}
        assert dropped, "the tiny judge found nothing: the drop path is not exercised"
        kept = {t for t, r in verified.items() if r.kept}
        sft, paired = _selected(store)
        assert sft == {t for t in kept - dropped if verified[t].label.value in ("O", "O_O", "X_O")}
        assert not paired & dropped
        assert metadata["judged"] == 5 and metadata["rows_out"] == 5
        assert metadata["judge_inconsistent"] + metadata["judge_setup_reference"] >= len(dropped)
        summary = summarize(store, instance, ["s1"], config)
        assert summary["judge"]["dropped"] == dict(Counter(v.drop_reason for v in verdicts.values() if v.drop_reason))
        assert summary["drop_reasons"]["judge"] == summary["judge"]["dropped"]
        assert summary["engines"]["judge_verdicts"]["requests_sent"] == 0
        assert "judge verdicts: 5 long traces judged" in render(summary)

        flag_only = _config(tmp_path, tiny_qwen2_path, drop=[])
        metadata = _run(flag_only, store, instance)
        assert (metadata["requests_sent"], metadata["cache_hits"]) == (0, 5)  # same requests, other knob
        again = {v.trace_id: v for v in store.read(JUDGE_VERDICTS, "s1")}
        assert {t: v.findings for t, v in again.items()} == {t: v.findings for t, v in verdicts.items()}
        assert all(v.drop_reason is None for v in again.values())
        sft, paired = _selected(store)
        assert sft == {t for t in kept if verified[t].label.value in ("O", "O_O", "X_O")}
        assert dropped <= sft | paired  # flagged, still selected
        assert summarize(store, instance, ["s1"], flag_only)["judge"]["flagged"] == dict(
            Counter(f for v in verdicts.values() for f in v.findings)
        )
    assert sent == [(5, 0), (0, 5)]


def test_garbage_replies_are_quarantined_and_kept_unless_the_knob_drops_them(tmp_path, tiny_qwen2_path):
    """Without guided decoding the random model writes no JSON: each trace gets a no-verdict
    row and a quarantine row with the reason; kept by default, dropped when `drop` says so."""
    free = {"structured_output": False, "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 16}}
    store = ParquetStore(base=str(tmp_path / "data"))
    _stored_shard(store)
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("shards", ["s1"])
        chosen = {}
        for drop in ([], ["judge_no_verdict"]):
            metadata = _run(_config(tmp_path, tiny_qwen2_path, drop=drop, **free), store, instance)
            verdicts = store.read(JUDGE_VERDICTS, "s1")
            quarantined = store.read(JUDGE_VERDICTS_QUARANTINE, "s1")
            assert len(verdicts) == 5 and all(v.findings == [NO_VERDICT] for v in verdicts)
            assert {q.item_id: q.reason for q in quarantined} == {v.trace_id: v.error for v in verdicts}
            assert {q.reason for q in quarantined} <= {"judge_no_json", "judge_truncated", "judge_invalid_unicode"}
            assert metadata["quarantined"] == 5 and metadata["judge_no_verdict"] == 5
            chosen[tuple(drop)] = _selected(store)[0]
        # a long CoT gone from storage after verification: no verdict, with why, and no crash
        store.write(LONG_COTS, "s1", [c for c in store.read(LONG_COTS, "s1") if c.long_id != "l5"])
        config = _config(tmp_path, tiny_qwen2_path, drop=["judge_no_verdict"], **free)
        resources = {"store": store, "judge_engine": engine_resource(config.engines.judge)}
        assert materialize(
            [stage_asset(JudgeStage(config), config)], partition_key="s1", instance=instance, resources=resources
        ).success
        verdicts = {v.trace_id: v for v in store.read(JUDGE_VERDICTS, "s1")}
        assert len(verdicts) == 5 and verdicts["l5"].error == "judge_missing_input"
        assert verdicts["l5"].drop_reason == "judge_no_verdict"
    assert chosen[()] == {"c2", "l1", "l2", "l3", "l5"} and chosen[("judge_no_verdict",)] == {"c2"}


@pytest.mark.slow
def test_the_pipeline_with_the_judge_on_loads_one_model_and_reruns_for_free(tmp_path, caplog):
    """`lpt_pipeline` with the judge on and every role (the judge by default) on the bundled
    model: the reasoner's loaded model serves the judge (one load in the run), the verdicts
    cover the kept long traces, the demo summary shows them, and a rerun sends nothing."""
    import logging

    from lpt.judge import judged_traces
    from lpt_assets.cli import run_pipeline
    from lpt_assets.registry import register_source
    from lpt_resources.engines import transformers_engine
    from tests.small_config import SMALL

    config = PipelineConfig.model_validate(
        {
            **SMALL,
            "storage": str(tmp_path / "data"),
            "exports": str(tmp_path / "exports"),
            "judge": {"enabled": True, "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 96}},
        }
    )
    store = ParquetStore(base=config.storage)
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        keys = register_source("sample?limit=1&shard_size=1", store, instance).shards
        caplog.set_level(logging.INFO, logger=transformers_engine.__name__)
        run_pipeline(instance, config, keys)
        loads = [
            r for r in caplog.records if r.name == transformers_engine.__name__ and r.getMessage().startswith("loaded ")
        ]
        assert len(loads) == 1, [r.getMessage() for r in loads]
        judged = {r.trace_id for key in keys for r in judged_traces(store.read(VERIFIED, key))}
        verdicts = [v for key in keys for v in store.read(JUDGE_VERDICTS, key)]
        assert judged and {v.trace_id for v in verdicts} == judged
        summary = summarize(store, instance, keys, config)
        assert summary["judge"]["judged"] == len(judged) and summary["engines"]["judge_verdicts"][
            "requests_sent"
        ] == len(judged)
        assert f"judge verdicts: {len(judged)} long traces judged" in render(summary)
        run_pipeline(instance, config, keys)
        assert summarize(store, instance, keys, config)["engines"]["judge_verdicts"]["requests_sent"] == 0
