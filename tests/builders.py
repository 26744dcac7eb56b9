"""Small record builders for tests (real records, readable defaults)."""

from lpt.records import MCQ, Caption, Label, Presentation, PresentedMCQ, SimpleCot, Verified


def caption(description: str, image_id: str = "img1", image_path: str = "/img1.png") -> Caption:
    return Caption(
        image_id=image_id,
        source="t",
        split="train",
        image_path=image_path,
        description=description,
        width=8,
        height=8,
    )


def simple_cot(cot_id: str, think: str, answer: str, sample_index: int = 0, **changes) -> SimpleCot:
    """A short CoT as the VLM writes it after the prompt's opening <think>."""
    fields = dict(
        cot_id=cot_id,
        mcq_id="m1",
        image_id="img1",
        sample_index=sample_index,
        text=f"\n{think}\n</think>\n<answer>{answer}</answer>",
        finish_reason="stop",
        prompt_tokens=40,
        completion_tokens=20,
        model="vlm",
        stand_in=False,
    )
    fields.update(changes)
    return SimpleCot(**fields)


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
