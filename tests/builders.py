"""Small record builders for tests (real records, readable defaults)."""

from lpt.records import MCQ, Label, Presentation, PresentedMCQ, Verified


def presented_mcq(mcq_id: str = "m1", image_id: str = "img1") -> PresentedMCQ:
    mcq = MCQ(
        mcq_id=mcq_id,
        image_id=image_id,
        question="What colour is the cap?",
        options=["Green", "Blue", "Red", "White"],
        answer="Green",
        reasoning_type="recognition",
    )
    presentation = Presentation(
        option_style="paren",
        answer_style="paren_letter",
        options=["Blue", "Green", "White", "Red"],
        gold_letter="B",
    )
    return PresentedMCQ(mcq=mcq, presentation=presentation)


def verified_row(trace_id: str = "t1", **changes) -> Verified:
    fields = dict(
        trace_id=trace_id,
        kind="long",
        mcq_id="m1",
        image_id="img1",
        cot_id="c1",
        long_id=trace_id,
        label=Label.X_O,
        think="The cap looks blue. Wait, it is green.",
        answer_raw="B",
        answer="(B)",
        response="<think>\nThe cap looks blue. Wait, it is green.\n</think>\n<answer>(B)</answer>",
        response_tokens=14,
        kept=True,
        drop_reason=None,
        behaviours={"backtracking": 1},
    )
    fields.update(changes)
    return Verified(**fields)
