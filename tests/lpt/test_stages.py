"""Stage objects (lpt/stage.py): stage 3's retry of a cut continuation is the generic retry
policy, applied through `Stage.retries` and `Stage.answer`, not code in the asset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lpt.config import PipelineConfig
from lpt.records import Caption, PresentedMCQ, SimpleCot
from lpt.stage import FIRST, Attempt
from lpt.stages import ThinkHarderStage
from lpt.tables import CAPTIONS, MCQS, SIMPLE_COTS


@dataclass(frozen=True)
class _Sample:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class _Reply:
    completions: list[_Sample] = field(default_factory=list)
    request_id: str = "r1"
    prompt_tokens: int = 5
    error: str | None = None
    target_logprobs: list[float] | None = None


@dataclass(frozen=True)
class _Engine:
    model: str = "reasoner"

    def get(self):
        raise AssertionError("stage 3 never loads its engine to plan")


def _stage_and_work(
    make_item: Callable[..., PresentedMCQ], make_short: Callable[..., SimpleCot], retry_max_tokens: int
):
    config = PipelineConfig.model_validate(
        {"think_harder": {"sampling": {"n": 1, "max_tokens": 16}, "retry_max_tokens": retry_max_tokens}}
    )
    stage = ThinkHarderStage(config)
    caption = Caption(
        image_id="img1", source="t", split="train", image_path="/none.png", description="An eye.", width=8, height=8
    )
    inputs = {
        CAPTIONS: {"s": [caption]},
        MCQS: {"s": [make_item(mcq_id="m1", gold_letter="B")]},
        SIMPLE_COTS: {"s": [make_short("Blue.</think><answer>(B)</answer>", index=0)]},
    }
    [item] = stage.plan(inputs, _Engine()).work["s"]
    return stage, item


def test_a_cut_continuation_is_asked_again_alone_with_the_larger_budget(make_item, make_short) -> None:
    stage, item = _stage_and_work(make_item, make_short, retry_max_tokens=64)
    assert stage.ask(item, FIRST).max_tokens == 16
    cut = _Reply([_Sample("and so", "length", 16)])
    assert stage.retries(FIRST, cut) == (0,)
    assert stage.answer(item, cut, FIRST).rows == []  # kept from its retry instead
    retry = Attempt(retry_of=0)
    ask = stage.ask(item, retry)
    assert (ask.n, ask.max_tokens, ask.salt) == (1, 64, f"retry-{item.plan.sample_indices[0]}")
    assert stage.retries(retry, _Reply([_Sample("still", "length", 64)])) == ()  # once only
    [row] = stage.answer(item, _Reply([_Sample("and so B.", "stop", 5)]), retry).rows
    assert (row.attempts, row.finish_reason, row.model) == (2, "stop", "reasoner")


def test_without_a_larger_budget_a_cut_continuation_is_kept(make_item, make_short) -> None:
    stage, item = _stage_and_work(make_item, make_short, retry_max_tokens=16)
    cut = _Reply([_Sample("and so", "length", 16)])
    assert stage.retry is None and stage.retries(FIRST, cut) == ()
    [row] = stage.answer(item, cut, FIRST).rows
    assert (row.attempts, row.finish_reason) == (1, "length")
