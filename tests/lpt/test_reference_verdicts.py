"""The pure method gives the verdicts it gave before it was made faster: every short and long
trace built from the reference run (and Unicode and leak-word variants of them, which exercise
`clean_unicode` and the leak filter), every MCQ parse, compared with a JSON of verdicts written
by the code as it stood before the speed-ups (with the leak-word families and setup phrases of
the rules in force). Regenerate only for an intended rule change:
`python -m tests.lpt.test_reference_verdicts` (and bump the rule versions in lpt/parse.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpt.config import VerifyConfig
from lpt.parse import drafts_from_json, drafts_from_tagged, normalise, validate_drafts
from lpt.records import MCQ, LongCot, Presentation, PresentedMCQ, SimpleCot, Verified, stable_id
from lpt.verify import verify_long, verify_short
from tests.lpt.conftest import _jsonl, _reference_presentation

VERDICTS = Path(__file__).with_name("reference_verdicts.json")
CONFIG = VerifyConfig()
CUES = ("Wait,", "Hmm,", "Alternatively,")
# Variants that change what a reader sees only through Unicode forms or add a leak word.
VARIANTS = {
    "as_is": lambda text: text,
    "zero_width": lambda text: text.replace("<answer>", "<answer>\u200b").replace(" ", " \u200d", 3),
    "fullwidth": lambda text: text.replace("(A)", "（Ａ）").replace("B", "Ｂ").replace(" ", "\u00a0", 2),
    "controls": lambda text: text.replace("</think>", "\u0007</think>\u200e").replace("the", "th\u00ade"),
    "leak": lambda text: text.replace(" the ", " the described text of the ", 1),
}


def _mcq(row: dict[str, Any], presentation: Presentation) -> PresentedMCQ:
    mcq = MCQ(
        mcq_id=row["mcq_id"],
        image_id=row["image_id"],
        question=row["question"],
        options=presentation.options,
        answer=row["gold_answer_text"],
        reasoning_type="recognition",
    )
    return PresentedMCQ(mcq=mcq, presentation=presentation)


def _verdict(row: Verified) -> dict[str, Any]:
    return {
        "trace": row.trace_id[:16],
        "label": row.label.value if row.label else None,
        "kept": row.kept,
        "drop_reason": row.drop_reason,
        "answer_raw": row.answer_raw,
        "answer": row.answer,
        "response": stable_id(row.response)[:16],
        "behaviours": row.behaviours,
    }


def compute_verdicts() -> dict[str, Any]:
    """Verdicts of the current code on every trace and MCQ response built from the fixtures."""
    traces: list[dict[str, Any]] = []
    for row in _jsonl("stage2_simple_cot_samples.jsonl"):
        item = _mcq(row, _reference_presentation(row))
        for variant, change in VARIANTS.items():
            shorts = []
            for index, text in enumerate(row["outputs"]):
                text = change(text.removeprefix("<think>"))
                cot = SimpleCot(
                    cot_id=stable_id(row["mcq_id"], variant, index),
                    mcq_id=row["mcq_id"],
                    image_id=row["image_id"],
                    sample_index=index,
                    text=text,
                    finish_reason="stop",
                    prompt_tokens=1,
                    completion_tokens=1,
                    model="reference",
                    stand_in=index % 2 == 1,
                )
                shorts.append((cot, verify_short(cot, item, CONFIG)))
            for index, (cot, short) in enumerate(shorts):
                continuation = shorts[(index + 1) % len(shorts)][0].text.split("</think>", 1)[-1]
                thought = shorts[(index + 3) % len(shorts)][0].text.split("</think>", 1)[0]
                long = LongCot(
                    long_id=stable_id(cot.cot_id, "long"),
                    cot_id=cot.cot_id,
                    mcq_id=cot.mcq_id,
                    image_id=cot.image_id,
                    sample_index=0,
                    short_think=short.think,
                    separator="\n\n",
                    cue=CUES[index % 3],
                    continuation=f" {thought}</think>{continuation}",
                    finish_reason="stop",
                    attempts=1,
                    prompt_tokens=1,
                    completion_tokens=1,
                    model="reference",
                )
                traces += [_verdict(short), _verdict(verify_long(long, short, item, CONFIG))]
    mcqs: list[dict[str, Any]] = []
    for response in _jsonl("stage1_mcq_raw_responses.jsonl"):
        for field in ("raw_response", "reformatted_response"):
            for variant, change in VARIANTS.items():
                text = change(response[field])
                for parser in (drafts_from_tagged, drafts_from_json):
                    drafts, errors = parser(text)
                    kept, quarantined = validate_drafts(response["image_id"], drafts, near_duplicate_threshold=0.9)
                    mcqs.append(
                        {
                            "source": f"{response['image_id']}:{field}:{variant}:{parser.__name__}",
                            "errors": errors,
                            "kept": [[m.mcq_id[:16], m.answer, [normalise(o) for o in m.options]] for m in kept],
                            "quarantined": [[q.item_id[:16], q.reason] for q in quarantined],
                        }
                    )
    return {"traces": traces, "mcqs": mcqs}


def test_verdicts_are_those_of_the_reference_code() -> None:
    expected = json.loads(VERDICTS.read_text())
    seen = compute_verdicts()
    assert len(seen["traces"]) == len(expected["traces"]) == 40 * 10 * len(VARIANTS) * 2
    for got, want in zip(seen["traces"], expected["traces"], strict=True):
        assert got == want
    assert seen["mcqs"] == expected["mcqs"]


if __name__ == "__main__":
    VERDICTS.write_text(json.dumps(compute_verdicts(), separators=(",", ":"), sort_keys=True) + "\n")
