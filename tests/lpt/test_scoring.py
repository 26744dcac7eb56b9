"""LaCoT rationale scoring: the (rationale, answer) likelihood matrix, rewards, BiN, suspects;
on a tiny random-weight model whose preference is known."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from lpt.prompts import VLM_SYSTEM, render_question
from lpt.records import LETTERS, PresentedMCQ, SimpleCot
from lpt.scoring import (
    SCORE_PREFILL,
    bin_log_row,
    rationales,
    rewards_by_cot,
    score_mcq,
    solutions,
    summary,
    targets,
    top_k_cots,
    without_suspects,
)
from lpt_resources.engines.base import ChatMessage, GenerationRequest

MakeItem = Callable[..., PresentedMCQ]
MakeShort = Callable[..., SimpleCot]


def _cots(make_short: MakeShort, thinks: list[str], mcq_id: str = "m1") -> list[SimpleCot]:
    return [make_short(f"{t}</think><answer>B</answer>", mcq_id=mcq_id, index=i) for i, t in enumerate(thinks)]


def test_rationales_skip_unfinished_empty_and_repeated(make_item: MakeItem, make_short: MakeShort) -> None:
    cots = _cots(make_short, ["Blue iris.", "Blue iris.", "Green?"])
    cots.append(make_short("Cut off", index=7, finish_reason="length"))
    cots.append(make_short("</think><answer>B</answer>", index=8))
    cots.append(make_short("Other MCQ.</think><answer>B</answer>", mcq_id="m2", index=9))
    scored = rationales(make_item(), cots)
    assert sorted(r.think for r in scored) == ["Blue iris.", "Green?"]


def test_targets_follow_the_requested_answer_style(make_item: MakeItem, make_short: MakeShort) -> None:
    item = make_item(answer_style="dot_letter")
    scored = rationales(item, _cots(make_short, ["Blue.", "Red."]))
    made = targets(item, scored)
    assert len(made) == 2 * 4
    assert solutions(item) == ["A.", "B.", "C.", "D."]
    assert solutions(make_item(answer_style="option_text")) == ["Red", "Blue", "Green", "Orange"]
    cot_id, letter, text = made[1]
    assert (cot_id, letter) == (scored[0].cot_id, "B")
    assert SCORE_PREFILL + text == f"<think>\n{scored[0].think}\n</think>\n<answer>B.</answer>"


def _logprobs(table: dict[str, list[list[float]]]) -> dict[tuple[str, str], list[float]]:
    return {(cot, LETTERS[j]): lps for cot, rows in table.items() for j, lps in enumerate(rows)}


def test_matrix_is_length_normalised_and_bin_picks_the_best_mean(make_item: MakeItem, make_short: MakeShort) -> None:
    item = make_item(gold_letter="B")
    scored = rationales(item, _cots(make_short, ["one", "two", "three"]))
    a, b, c = (r.cot_id for r in scored)
    logprobs = _logprobs(
        {
            a: [[-1.0, -1.0], [-2.0], [-4.0, -4.0, -4.0], [-3.0]],  # means -1, -2, -4, -3
            b: [[-1.5], [-1.0, -3.0], [-4.0], [-3.0]],  # -1.5, -2, -4, -3
            c: [[-3.0], [-0.5], [-4.0], [-3.0]],  # -3, -0.5, -4, -3
        }
    )
    s = score_mcq(item, scored, logprobs, suspect_margin=0.1)
    assert s.likelihoods == [[-1.0, -2.0, -4.0, -3.0], [-1.5, -2.0, -4.0, -3.0], [-3.0, -0.5, -4.0, -3.0]]
    assert s.rewards == [-2.0, -2.0, -0.5]
    assert s.option_scores == pytest.approx([-5.5 / 3, -1.5, -4.0, -3.0])
    assert (s.bin_letter, s.margin, s.suspect, s.best_index) == ("B", 0.0, False, 2)
    wrong_key = make_item(gold_letter="A")
    s2 = score_mcq(wrong_key, scored, logprobs, suspect_margin=0.1)
    assert (s2.bin_letter, s2.gold_letter, s2.suspect) == ("B", "A", True)
    assert s2.margin == pytest.approx(-1.5 + 5.5 / 3)
    assert not score_mcq(wrong_key, scored, logprobs, suspect_margin=1.0).suspect
    assert rewards_by_cot([s]) == {a: -2.0, b: -2.0, c: -0.5}
    assert top_k_cots([s], 2) == {c, min(a, b)}
    assert without_suspects({"m1": "prompt", "m2": "other"}, [s2]) == {"m2": "other"}
    assert without_suspects({"m1": "prompt"}, [s]) == {"m1": "prompt"}
    row = bin_log_row(s)
    assert list(row) == ["id", "rationals", "solutions", "likelihoods", "best_index"]
    assert json.loads(json.dumps(row)) == row
    figures = summary([s, s2])
    assert (figures["bin_accuracy"], figures["suspect_keys"], figures["rationales_scored"]) == (0.5, ["m1"], 6)
    with pytest.raises(ValueError, match="no rationale"):
        score_mcq(item, [], logprobs, 0.1)


def test_bin_picks_the_answer_the_tiny_model_prefers(
    tiny_qwen2_path, make_item: MakeItem, make_short: MakeShort
) -> None:
    """The tiny random-weight Qwen2 keeps writing "_functions" (greedy, it repeats that token):
    an option written that way is the one its likelihoods support, whatever the key says."""
    from lpt_resources.engines.transformers_engine import TransformersEngine

    options = ("zebra crossing", "_functions_functions_functions", "quiet violet harbour", "seven")
    item = make_item(options=options, gold_letter="C", answer_style="option_text")
    scored = rationales(
        item, _cots(make_short, ["_functions_functions_functions_functions", "A quiet violet harbour, seven zebras."])
    )
    engine = TransformersEngine(str(tiny_qwen2_path), batch_size=8)
    try:
        made = targets(item, scored)
        messages = (
            ChatMessage(role="system", content=VLM_SYSTEM),
            ChatMessage(role="user", content=render_question(item)),
        )
        results = engine.generate(
            [
                GenerationRequest(request_id=f"{cot}-{letter}", messages=messages, prefill=SCORE_PREFILL, target=text)
                for cot, letter, text in made
            ]
        )
    finally:
        engine.close()
    logprobs = {(cot, letter): r.target_logprobs for (cot, letter, _), r in zip(made, results)}
    s = score_mcq(item, scored, logprobs, suspect_margin=0.05)
    assert len(s.likelihoods) == 2 and all(len(row) == 4 for row in s.likelihoods)
    assert s.bin_letter == "B" and s.gold_letter == "C"
    assert s.suspect and s.margin > 0.05
    assert s.rationales[s.best_index].startswith("_functions")  # the rationale it prefers too
    right_key = score_mcq(
        make_item(options=options, gold_letter="B", answer_style="option_text"), scored, logprobs, 0.05
    )
    assert (right_key.suspect, right_key.margin, right_key.rewards) == (False, 0.0, [row[1] for row in s.likelihoods])


def _scores(item: PresentedMCQ, cots: list[SimpleCot], rewards: dict[str, float]):
    """Scores whose reward (gold-answer likelihood) for each rationale is rewards[its think]."""
    scored = rationales(item, cots)
    gold = item.presentation.gold_letter
    logprobs = {
        (r.cot_id, letter): [rewards[r.think] if letter == gold else -9.0] for r in scored for letter in LETTERS
    }
    return score_mcq(item, scored, logprobs, suspect_margin=0.1)


def test_top_k_ranks_each_label_apart(make_item: MakeItem, make_short: MakeShort) -> None:
    s = _scores(
        make_item(),
        _cots(make_short, ["one", "two", "three", "four"]),
        {"one": -1.0, "two": -0.5, "three": -3.0, "four": -2.0},
    )
    a, b, c, d = (dict(zip(s.rationales, s.cot_ids))[t] for t in ("one", "two", "three", "four"))
    assert top_k_cots([s], 1) == {b}
    assert top_k_cots([s], 1, {a: "O", b: "O", c: "X", d: "X"}) == {b, d}
    assert top_k_cots([s], 1, {a: "O", c: "X"}) == {a, c}  # unlabelled ones do not compete
    assert top_k_cots([s], 5, {a: "O", b: "O", c: "X", d: "X"}) == {a, b, c, d}


def test_stage_3_expands_the_best_rewarded_short_cots_of_each_label(make_item: MakeItem, make_short: MakeShort) -> None:
    """k = 1: per scored MCQ, its best right (O) and its best wrong (X) short CoT, so self-
    corrections keep their seeds; an MCQ without scores keeps every short CoT; expand_labels
    still decides which labels are extended at all."""
    from lpt.config import Sampling, ThinkHarderConfig, VerifyConfig
    from lpt.records import Caption
    from lpt.stages import plan_continuations

    items = {m: make_item(mcq_id=m, gold_letter="B") for m in ("m1", "m2")}
    captions = {
        "img1": Caption(
            image_id="img1", source="t", split="train", image_path="/none.png", description="An eye.", width=8, height=8
        )
    }
    right = [make_short(f"Blue {i}.</think><answer>(B)</answer>", index=i) for i in range(3)]
    wrong = [make_short(f"Green {i}.</think><answer>(C)</answer>", index=3 + i) for i in range(2)]
    unscored = [make_short(f"Blue again {i}.</think><answer>(B)</answer>", mcq_id="m2", index=i) for i in range(2)]
    shorts = right + wrong + unscored
    s = _scores(
        items["m1"],
        right + wrong,
        {"Blue 0.": -2.0, "Blue 1.": -0.5, "Blue 2.": -1.0, "Green 0.": -3.0, "Green 1.": -2.5},
    )
    by_think = dict(zip(s.rationales, s.cot_ids))
    best_right, best_wrong = by_think["Blue 1."], by_think["Green 1."]

    def expanded(**fields) -> set[str]:
        cfg = ThinkHarderConfig(sampling=Sampling(n=1), **fields)
        return {p.cot.cot_id for p in plan_continuations(items, captions, shorts, cfg, VerifyConfig(), [s])}

    everything = {c.cot_id for c in shorts}
    assert expanded() == everything
    assert expanded(expand_top_k_by_reward=1) == {best_right, best_wrong} | {c.cot_id for c in unscored}
    assert expanded(expand_top_k_by_reward=1, expand_labels=("O",)) == {best_right} | {c.cot_id for c in unscored}
    assert expanded(expand_top_k_by_reward=9) == everything
