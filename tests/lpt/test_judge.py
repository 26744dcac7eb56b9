"""The optional judge: its prompt, its JSON verdict and the parser that never crashes on a bad
reply, the drop knob (drop or only flag), and curation over constructed verdicts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lpt.config import JudgeConfig, PipelineConfig, SelectConfig, load_config
from lpt.judge import (
    INCONSISTENT,
    NO_VERDICT,
    SETUP_REFERENCE,
    JudgeReply,
    apply_verdicts,
    judge_json_schema,
    judge_prompt,
    judged_traces,
    no_verdict,
    parse_reply,
    summary,
    verdict_from_reply,
)
from lpt.records import JudgeVerdict, Label, LongCot, TrainingPrompt
from lpt.select import mine_pairs, select_sft
from lpt_assets.versions import code_versions
from tests.builders import presented_mcq, verified_row

SHORT = "The cap on the bottle looks blue under the shop lights."
REFLECTION = "Wait, the label beside it is green, and the cap matches the label, so the cap is green."
FINAL = "(B)"


def _long(long_id: str = "l1", short_think: str = SHORT) -> LongCot:
    return LongCot(
        long_id=long_id,
        cot_id="c1",
        mcq_id="m1",
        image_id="img1",
        sample_index=0,
        short_think=short_think,
        separator=" ",
        cue="Wait,",
        continuation=REFLECTION.removeprefix("Wait,") + "</think><answer>(B)</answer>",
        finish_reason="stop",
        attempts=1,
        prompt_tokens=80,
        completion_tokens=30,
        model="reasoner",
    )


def _row(trace_id: str = "l1", **changes):
    return verified_row(trace_id, think=f"{SHORT} {REFLECTION}", answer_raw=FINAL, **changes)


def _reply(consistent: bool, setup: bool, reason: str = "The reflection settles on green and answers (B).") -> str:
    return json.dumps({"reason": reason, "reflection_consistent": consistent, "refers_to_setup": setup})


def test_the_prompt_shows_question_gold_both_parts_of_the_reasoning_and_the_answer():
    prompt = judge_prompt(presented_mcq(), _long(), _row())
    user = prompt.user
    assert prompt.key == "l1" and prompt.image_path is None and prompt.prefill is None
    assert "What colour is the cap?" in user and "A. Blue\nB. Green\nC. White\nD. Red" in user
    assert "Correct option: B. Green" in user
    assert f"Reasoning before the cue:\n{SHORT}\n\nAdded reflection:\n{REFLECTION}\n\nFinal answer: (B)" in user
    assert user.count(SHORT) == 1  # the short CoT is not repeated inside the reflection
    assert "reflection_consistent" in user and "refers_to_setup" in user


def test_the_schema_is_what_the_parser_reads():
    schema = judge_json_schema()
    assert schema["required"] == ["reason", "reflection_consistent", "refers_to_setup"]
    assert schema["additionalProperties"] is False and schema["properties"]["reason"]["maxLength"] == 300
    assert list(schema["properties"]) == ["reason", "reflection_consistent", "refers_to_setup"]  # reason first


@pytest.mark.parametrize(
    ("text", "finish", "expected"),
    [
        (_reply(True, False), "stop", (True, False)),
        # prose and a fence around it, extra keys, as servers without guided decoding write
        (
            'Here is my verdict:\n```json\n{"reason": "It says the user provided a detailed image.", '
            '"reflection_consistent": true, "refers_to_setup": true, "confidence": 0.9}\n```',
            "stop",
            (True, True),
        ),
        (
            '{"reason": "' + "long " * 100 + '", "reflection_consistent": false, "refers_to_setup": false}',
            "stop",
            (False, False),
        ),
        ('{"reason": "ok", "reflection_consistent": "false", "refers_to_setup": "no"}', "stop", (False, False)),
        ('{"reason": "The reflection argues for (A) but the answer is', "length", "judge_truncated"),
        ("I think the reflection is fine and it never mentions the setup.", "stop", "judge_no_json"),
        ("{{{{[[[" * 200, "stop", "judge_no_json"),
        (
            '{"reason": "x", "reflection_consistent": "maybe", "refers_to_setup": false}',
            "stop",
            "judge_invalid:reflection_consistent",
        ),
        ('{"reason": "x", "reflection_consistent": true}', "stop", "judge_invalid:refers_to_setup"),
        ('{"verdict": {"ok": true}}', "stop", "judge_invalid:reason"),
        (
            '{"reason": "\ud800", "reflection_consistent": true, "refers_to_setup": false}',
            "stop",
            "judge_invalid_unicode",
        ),
    ],
)
def test_a_reply_becomes_a_verdict_or_a_reason(text, finish, expected):
    reply = parse_reply(text, finish)
    if isinstance(expected, str):
        assert reply == expected
    else:
        assert isinstance(reply, JudgeReply)
        assert (reply.reflection_consistent, reply.refers_to_setup) == expected


def test_the_knob_decides_what_is_dropped_and_what_is_only_flagged():
    row = _row()
    both = _reply(False, True, "It answers (B) after arguing for blue, and says it was told to avoid the description.")
    dropped = verdict_from_reply(row, both, "stop", JudgeConfig())
    assert dropped.findings == [INCONSISTENT, SETUP_REFERENCE] and dropped.drop_reason == INCONSISTENT
    assert (dropped.consistent, dropped.setup_reference, dropped.error) == (False, True, None)
    assert dropped.reason.startswith("It answers (B)") and dropped.label == "X_O"
    setup_only = verdict_from_reply(row, both, "stop", JudgeConfig(drop=("judge_setup_reference",)))
    assert setup_only.drop_reason == SETUP_REFERENCE
    flagged = verdict_from_reply(row, both, "stop", JudgeConfig(drop=()))
    assert flagged.findings == [INCONSISTENT, SETUP_REFERENCE] and flagged.drop_reason is None
    clean = verdict_from_reply(row, _reply(True, False), "stop", JudgeConfig())
    assert clean.findings == [] and clean.drop_reason is None


def test_an_unreadable_reply_is_no_verdict_kept_unless_the_knob_drops_it():
    row = _row()
    kept = verdict_from_reply(row, "!!!! garbage ((((", "length", JudgeConfig())
    assert (kept.findings, kept.error, kept.drop_reason, kept.consistent) == (
        [NO_VERDICT],
        "judge_truncated",
        None,
        None,
    )
    assert kept.reason == "!!!! garbage (((("
    strict = JudgeConfig(drop=("judge_inconsistent", "judge_no_verdict"))
    assert verdict_from_reply(row, "no json here", "stop", strict).drop_reason == NO_VERDICT
    refused = no_verdict(row, "engine_refused", "prompt is longer than the model's context " * 20, strict)
    assert refused.error == "engine_refused" and len(refused.reason) == 300 and refused.drop_reason == NO_VERDICT


def test_only_kept_labelled_long_traces_are_judged():
    rows = [
        _row("l2"),
        _row("l1"),
        _row("l3", kept=False, drop_reason="setup:the user provided"),
        _row("l4", label=None, kept=False, drop_reason="no_answer"),
        verified_row("c1", kind="short", long_id=None, label=Label.O),
    ]
    assert [r.trace_id for r in judged_traces(rows)] == ["l1", "l2"]


def _verdict(trace_id: str, findings: list[str], config: JudgeConfig) -> JudgeVerdict:
    reply = _reply(INCONSISTENT not in findings, SETUP_REFERENCE in findings)
    return verdict_from_reply(_row(trace_id), reply, "stop", config)


def test_curation_drops_by_the_judges_reason_and_keeps_flagged_traces():
    """X_O traces l1 (inconsistent), l2 (setup reference), l3 (clean) and an X trace for DPO:
    with the default knob only l3 reaches SFT and only l3 > x1 is a pair; flag-only keeps all."""
    rows = [
        _row("l1"),
        _row("l2"),
        _row("l3"),
        _row("x1", label=Label.X_X),
        _row("l9", kept=False, drop_reason="duplicate"),
    ]
    prompts = {"m1": TrainingPrompt(mcq_id="m1", image_id="img1", image_path="/img1.png", system="s", prompt="p")}
    select = SelectConfig(sft_per_mcq=4, self_correction_share=1.0, max_pairs_per_type_per_mcq=4)
    found = {"l1": [INCONSISTENT], "l2": [SETUP_REFERENCE], "l3": [], "x1": []}

    def curate(config: JudgeConfig):
        verdicts = [_verdict(t, f, config) for t, f in found.items()]
        curated = apply_verdicts(rows, verdicts)
        return curated, select_sft(curated, prompts, select), mine_pairs(curated, prompts, select)

    curated, sft, pairs = curate(JudgeConfig())
    assert {r.trace_id: r.drop_reason for r in curated if not r.kept} == {
        "l1": "judge_inconsistent",
        "l2": "judge_setup_reference",
        "l9": "duplicate",
    }
    assert [s.trace_id for s in sft] == ["l3"] and {(p.chosen_id, p.rejected_id) for p in pairs} == {("l3", "x1")}

    curated, sft, pairs = curate(JudgeConfig(drop=()))
    assert curated == rows
    assert sorted(s.trace_id for s in sft) == ["l1", "l2", "l3"] and len(pairs) == 3


def test_summary_counts_findings_drops_and_flags():
    config = JudgeConfig(drop=("judge_inconsistent",))
    verdicts = [
        _verdict("l1", [INCONSISTENT], config),
        _verdict("l2", [SETUP_REFERENCE], config),
        _verdict("l3", [INCONSISTENT, SETUP_REFERENCE], config),
        _verdict("l4", [], config),
        verdict_from_reply(_row("l5"), "no verdict", "stop", config),
    ]
    assert summary(verdicts) == {
        "judged": 5,
        "consistent": 2,
        "judge_inconsistent": 2,
        "judge_setup_reference": 2,
        "judge_no_verdict": 1,
        "dropped": {"judge_inconsistent": 2},
        "flagged": {"judge_no_verdict": 1, "judge_setup_reference": 1},  # on traces that stay
        "no_verdict_reasons": {"judge_no_json": 1},
    }


def test_the_judge_is_off_by_default_and_is_the_reasoner_unless_configured(tmp_path, monkeypatch):
    config = load_config()
    assert config.judge.enabled is False and "judge_verdicts" not in code_versions(config)
    assert config.engine_roles() == ["ask", "vlm", "reasoner"]
    (tmp_path / "c.toml").write_text(
        '[judge]\nenabled = true\n[engines.reasoner]\nkind = "vllm"\nmodel = "org/reasoner"\n'
    )
    on = load_config(tmp_path / "c.toml")
    assert on.engines.judge == on.engines.reasoner and on.engines.judge.dtype == "bfloat16"
    assert on.engine_roles() == ["ask", "vlm", "reasoner", "judge"]
    monkeypatch.setenv("LPT_JUDGE_MODEL", "org/judge")
    own = load_config(tmp_path / "c.toml").engines.judge
    assert own.model == "org/judge" and own.kind == "transformers"  # its own table: nothing inherited
    with pytest.raises(ValidationError, match="drop"):
        JudgeConfig(drop=("judge_wrong_answer",))


def test_the_judge_and_its_knob_version_selection_but_not_what_comes_before():
    off = PipelineConfig()
    on = PipelineConfig.model_validate({"judge": {"enabled": True}})
    flag_only = PipelineConfig.model_validate({"judge": {"enabled": True, "drop": []}})
    versions = [code_versions(c) for c in (off, on, flag_only)]
    assert len({v["verified"] for v in versions}) == 1
    assert (
        len({v["sft_samples"] for v in versions}) == 3
        and versions[1]["judge_verdicts"] != versions[2]["judge_verdicts"]
    )
