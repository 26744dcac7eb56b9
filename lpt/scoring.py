"""LaCoT's data side: score each short CoT (a rationale) with every answer option.

For one MCQ with rationales z_1..z_N and options y_1..y_4, the VLM scores the text
"z_i, then answer y_j" after the stage-2 prompt (image and question), teacher-forced. The
length-normalised joint log-likelihood L[i][j] (mean log-probability per token) gives
- a rationale's reward: L[i][gold], how well it leads to the gold answer;
- the Best-of-N (BiN) estimate of the answer: argmax_j mean_i L[i][j], the option the model's
  own rationales support best, and its margin over the gold option;
- `best_index`: the rationale that supports the BiN answer best (LaCoT's BiN log field).
An MCQ whose BiN answer beats its gold option by more than a margin is a suspect key: the
model's own reasoning disagrees with the answer key, which may be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from lpt.grade import format_answer
from lpt.parse import parse_cot
from lpt.records import LETTERS, McqScores, PresentedMCQ, Record, SimpleCot
from lpt.verify import render_response

T = TypeVar("T")
SCORE_PREFILL = "<think>"  # the stage-2 pre-fill: targets continue it


class Rationale(Record):
    """A short CoT's reasoning, as it is scored."""

    cot_id: str
    mcq_id: str
    think: str


def rationales(item: PresentedMCQ, cots: Sequence[SimpleCot]) -> list[Rationale]:
    """The reasoning of each of the MCQ's short CoTs that finished and has some, by cot id
    (the same rationale text is scored once)."""
    out: dict[str, Rationale] = {}
    for cot in sorted(cots, key=lambda c: c.cot_id):
        if cot.mcq_id != item.mcq.mcq_id or cot.finish_reason != "stop":
            continue
        think = (parse_cot(cot.text).think or "").strip()
        if think and think not in {r.think for r in out.values()}:
            out[cot.cot_id] = Rationale(cot_id=cot.cot_id, mcq_id=cot.mcq_id, think=think)
    return list(out.values())


def solutions(item: PresentedMCQ) -> list[str]:
    """Each option written as an answer in the style the prompt asked for, A..D."""
    return [format_answer(letter, item.presentation) for letter in LETTERS]


def score_target(think: str, answer: str) -> str:
    """The text scored after the prompt and its "<think>" pre-fill: the whole response a
    trained model would write with this reasoning and this answer."""
    return render_response(think, answer).removeprefix(SCORE_PREFILL)


def targets(item: PresentedMCQ, scored: Sequence[Rationale]) -> list[tuple[str, str, str]]:
    """(cot id, letter, target text) for every rationale and option."""
    answers = solutions(item)
    return [(r.cot_id, letter, score_target(r.think, answers[j])) for r in scored for j, letter in enumerate(LETTERS)]


def normalised(logprobs: Sequence[float]) -> float:
    """Length-normalised joint log-likelihood: the mean log-probability per target token."""
    if not logprobs:
        raise ValueError("a target with no tokens has no likelihood")
    return sum(logprobs) / len(logprobs)


def score_mcq(
    item: PresentedMCQ,
    scored: Sequence[Rationale],
    logprobs: Mapping[tuple[str, str], Sequence[float]],
    suspect_margin: float,
) -> McqScores:
    """The likelihood matrix and its BiN figures, from each (cot id, letter) target's token
    log-probabilities. Ties go to the earlier letter, and to the earlier rationale."""
    if not scored:
        raise ValueError(f"MCQ {item.mcq.mcq_id}: no rationale to score")
    matrix = [[normalised(logprobs[(r.cot_id, letter)]) for letter in LETTERS] for r in scored]
    option_scores = [sum(row[j] for row in matrix) / len(matrix) for j in range(len(LETTERS))]
    best = max(range(len(LETTERS)), key=lambda j: (option_scores[j], -j))
    gold = LETTERS.index(item.presentation.gold_letter)
    margin = option_scores[best] - option_scores[gold]
    return McqScores(
        mcq_id=item.mcq.mcq_id,
        image_id=item.mcq.image_id,
        cot_ids=[r.cot_id for r in scored],
        rationales=[r.think for r in scored],
        solutions=solutions(item),
        likelihoods=matrix,
        rewards=[row[gold] for row in matrix],
        option_scores=option_scores,
        gold_letter=item.presentation.gold_letter,
        bin_letter=LETTERS[best],
        margin=margin,
        best_index=max(range(len(matrix)), key=lambda i: (matrix[i][best], -i)),
        suspect=best != gold and margin > suspect_margin,
    )


def rewards_by_cot(scores: Sequence[McqScores]) -> dict[str, float]:
    """Each scored short CoT's reward (its likelihood with the gold answer)."""
    return {cot_id: reward for s in scores for cot_id, reward in zip(s.cot_ids, s.rewards)}


def without_suspects(prompts: Mapping[str, T], scores: Sequence[McqScores]) -> dict[str, T]:
    """The MCQ-keyed mapping less the MCQs whose key is suspect: selection skips an MCQ
    without a training prompt, so this holds suspect keys out of SFT and DPO."""
    suspects = {s.mcq_id for s in scores if s.suspect}
    return {mcq_id: value for mcq_id, value in prompts.items() if mcq_id not in suspects}


def top_k_cots(scores: Sequence[McqScores], k: int, labels: Mapping[str, str] | None = None) -> set[str]:
    """The k short CoTs of each MCQ with the highest reward (ties: the earlier cot id); with
    `labels` (cot id -> label), the k best of each label apart, among the labelled ones."""
    keep: set[str] = set()
    for s in scores:
        groups: dict[str | None, list[tuple[str, float]]] = {}
        for cot_id, reward in zip(s.cot_ids, s.rewards):
            if labels is None or cot_id in labels:
                groups.setdefault(labels[cot_id] if labels is not None else None, []).append((cot_id, reward))
        for group in groups.values():
            ranked = sorted(group, key=lambda pair: (-pair[1], pair[0]))
            keep.update(cot_id for cot_id, _ in ranked[:k])
    return keep


def bin_log_row(s: McqScores) -> dict[str, object]:
    """One MCQ in LaCoT's own BiN log schema."""
    return {
        "id": s.mcq_id,
        "rationals": s.rationales,
        "solutions": s.solutions,
        "likelihoods": s.likelihoods,
        "best_index": s.best_index,
    }


def summary(scores: Sequence[McqScores]) -> dict[str, object]:
    """Figures for metadata and the demo: reward distribution, BiN accuracy against the gold
    key, suspect keys."""
    rewards = sorted(r for s in scores for r in s.rewards)

    def quantile(q: float) -> float | None:
        return round(rewards[min(len(rewards) - 1, int(q * len(rewards)))], 4) if rewards else None

    return {
        "mcqs_scored": len(scores),
        "rationales_scored": len(rewards),
        "reward_p10": quantile(0.1),
        "reward_median": quantile(0.5),
        "reward_p90": quantile(0.9),
        "bin_accuracy": round(sum(s.bin_letter == s.gold_letter for s in scores) / len(scores), 4) if scores else None,
        "suspect_keys": sorted(s.mcq_id for s in scores if s.suspect),
    }
