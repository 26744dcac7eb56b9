"""The quality gates on real-looking records and on the reference run's real model outputs."""

from pathlib import Path
from typing import Any

import pytest

from lpt.config import ChecksConfig, VerifyConfig, load_config
from lpt.quality import accuracy_band, leak_rate, mcq_validity, pair_balance, parse_rate, truncation_rate
from lpt.records import MCQ, DpoPair, Label, PairType, Presentation, PresentedMCQ, Quarantined
from lpt.verify import verify_short
from tests.builders import presented_mcq, verified_row

JUDGE_ALL = ChecksConfig(min_rows=1)
PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper.toml"


def _refused(reason: str) -> Quarantined:
    return Quarantined(stage="mcqs", item_id="img1", reason=reason, detail="")


def test_mcq_validity_counts_refused_drafts_but_not_notes() -> None:
    mcqs = [presented_mcq(f"m{i}") for i in range(3)]
    refused = [_refused("near_duplicate"), _refused("truncated_response")]
    result = mcq_validity(mcqs, refused, JUDGE_ALL)
    assert (result.passed, result.value, result.rows, result.judged) == (True, 0.75, 4, True)
    assert result.threshold == ">= 0.2"
    strict = mcq_validity(mcqs, refused, ChecksConfig(min_rows=1, min_mcq_validity=0.8))
    assert not strict.passed
    assert strict.reason == "MCQ validity rate 0.75 (3/4) is outside the threshold >= 0.8"


def test_too_few_rows_pass_with_a_note() -> None:
    result = mcq_validity([], [_refused("unparsable")] * 3, ChecksConfig(min_rows=4, min_mcq_validity=0.9))
    assert result.passed and not result.judged and result.value == 0.0
    assert "too few rows to judge (fewer than 4)" in result.reason
    empty = truncation_rate([], 0.1, JUDGE_ALL)
    assert empty.passed and empty.value is None and empty.rows == 0


def test_truncation_rate(make_short) -> None:
    shorts = [make_short(f"t{i}", index=i, finish_reason="length" if i < 2 else "stop") for i in range(5)]
    assert truncation_rate(shorts, 0.5, JUDGE_ALL).value == 0.4
    assert truncation_rate(shorts, 0.5, JUDGE_ALL).passed
    tight = truncation_rate(shorts, 0.3, JUDGE_ALL)
    assert not tight.passed and tight.threshold == "<= 0.3"


def test_parse_rate_leaves_truncated_traces_to_the_truncation_gate(make_item, make_short) -> None:
    item = make_item()
    texts = [
        ("It is blue.</think>\n<answer>(B)</answer>", "stop"),
        ("It is red.</think>\n<answer>(A)</answer>", "stop"),
        ("no answer tags at all", "stop"),
        ("It is", "length"),
    ]
    rows = [
        verify_short(make_short(t, index=i, finish_reason=f), item, VerifyConfig()) for i, (t, f) in enumerate(texts)
    ]
    result = parse_rate(rows, JUDGE_ALL)
    assert (result.value, result.rows) == (round(2 / 3, 4), 3)
    assert not parse_rate(rows, ChecksConfig(min_rows=1, min_parse_rate=0.7)).passed


def test_leak_rate_counts_a_traces_own_leaks_only() -> None:
    rows = [
        verified_row("a"),
        verified_row("b", kept=False, drop_reason="leak:description"),
        verified_row("c", kept=False, drop_reason="short_leak:text"),
        verified_row("d", label=None, kept=False, drop_reason="no_answer"),  # not graded: not counted
    ]
    result = leak_rate(rows, JUDGE_ALL)
    assert (result.value, result.rows) == (round(1 / 3, 4), 3)
    assert not leak_rate(rows, ChecksConfig(min_rows=1, max_leak_rate=0.3)).passed


def test_accuracy_band_catches_too_low_and_too_high() -> None:
    rows = [verified_row(f"l{i}", label=label) for i, label in enumerate([Label.X_O, Label.O_O, Label.O_X, Label.X_X])]
    rows.append(verified_row("s", kind="short", long_id=None, label=Label.O))
    long = accuracy_band(rows, "long", (0.2, 0.9), JUDGE_ALL)
    assert (long.passed, long.value, long.rows, long.check) == (True, 0.5, 4, "long_accuracy")
    assert not accuracy_band(rows, "long", (0.6, 1.0), JUDGE_ALL).passed
    too_easy = accuracy_band(rows, "short", (0.2, 0.9), JUDGE_ALL)
    assert not too_easy.passed and too_easy.value == 1.0
    assert too_easy.reason == "short-CoT accuracy 1.0 (1/1) is outside the threshold in [0.2, 0.9]"


def _pair(index: int, pair_type: PairType) -> DpoPair:
    return DpoPair(
        pair_id=f"p{index}",
        pair_type=pair_type,
        mcq_id=f"m{index}",
        image_id="img1",
        chosen_id=f"c{index}",
        rejected_id=f"r{index}",
        image_path="/images/img1.jpg",
        system="",
        prompt="Q",
        chosen="a",
        rejected="b",
    )


def test_pair_balance() -> None:
    balanced = [
        _pair(i, t) for i, t in enumerate([PairType.O_GT_X, PairType.O_GT_X, PairType.O_GT_O_O, PairType.X_O_GT_X])
    ]
    result = pair_balance(balanced, mcqs=4, config=ChecksConfig(min_rows=1, max_pair_type_share=0.6))
    assert result.passed and result.value == 0.5
    one_sided = pair_balance(
        [_pair(i, PairType.O_GT_X) for i in range(4)], 4, ChecksConfig(min_rows=1, max_pair_type_share=0.6)
    )
    assert not one_sided.passed and "share of O>X pairs 1.0 (4/4)" in one_sided.reason
    none_expected = pair_balance([], mcqs=3, config=ChecksConfig(min_mcqs_for_pairs=5))
    assert none_expected.passed and not none_expected.judged
    none_but_enough = pair_balance([], mcqs=5, config=ChecksConfig(min_mcqs_for_pairs=5))
    assert not none_but_enough.passed and none_but_enough.reason.startswith("no DPO pairs from 5 MCQs")


def _reference_shorts(reference_items: list[tuple[dict[str, Any], Presentation]], make_short) -> list:
    rows = []
    for row, presentation in reference_items:
        mcq = MCQ(
            mcq_id=row["mcq_id"],
            image_id=row["image_id"],
            question=row["question"],
            options=presentation.options,
            answer=row["gold_answer_text"],
            reasoning_type=row["reasoning_type"],
        )
        item = PresentedMCQ(mcq=mcq, presentation=presentation)
        for index, text in enumerate(row["outputs"]):
            short = make_short(text.removeprefix("<think>"), mcq_id=row["mcq_id"], index=index)
            rows.append(verify_short(short, item, VerifyConfig()))
    return rows


def test_paper_thresholds_pass_the_reference_runs_real_outputs(reference_items, make_short) -> None:
    """Qwen2.5-VL-7B's 400 real short CoTs (strict accuracy about 58%) pass the paper-level
    gates; a band that demands near-perfect answers does not."""
    checks = load_config(PAPER).checks
    rows = _reference_shorts(reference_items, make_short)
    parsed = parse_rate(rows, checks)
    accuracy = accuracy_band(rows, "short", checks.short_accuracy, checks)
    assert parsed.passed and parsed.judged and parsed.rows == 400 and parsed.value > 0.95
    assert accuracy.passed and accuracy.judged
    assert accuracy.value == round(234 / sum(r.label is not None for r in rows), 4)
    assert not accuracy_band(rows, "short", (0.9, 1.0), checks).passed


def test_config_rejects_an_inverted_band() -> None:
    with pytest.raises(ValueError, match="lower bound is above the upper one"):
        ChecksConfig(long_accuracy=(0.9, 0.1))
