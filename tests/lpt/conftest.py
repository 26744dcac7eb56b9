"""Shared fixtures for the pure `lpt` modules: real reference-run outputs (tests/reference_run.py)
and record factories."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from lpt.parse import strip_letter_prefix
from lpt.records import (
    LETTERS,
    MCQ,
    AnswerStyle,
    FinishReason,
    LongCot,
    Presentation,
    PresentedMCQ,
    SimpleCot,
    stable_id,
)
from tests.reference_run import reference_file


def _jsonl(name: str) -> list[dict[str, Any]]:
    """Rows of a reference-run file ($LPT_REFERENCE_RUN); the test is skipped without one."""
    path = reference_file(name)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def stage1_raw() -> list[dict[str, Any]]:
    return _jsonl("stage1_mcq_raw_responses.jsonl")


@pytest.fixture(scope="session")
def stage1_parsed() -> list[dict[str, Any]]:
    return _jsonl("stage1_mcqs_parsed.jsonl")


@pytest.fixture(scope="session")
def stage2_rows() -> list[dict[str, Any]]:
    return _jsonl("stage2_simple_cot_samples.jsonl")


def _reference_presentation(row: dict[str, Any]) -> Presentation:
    """The presentation a stage-2 reference row was shown with, rebuilt as our record."""
    options = [strip_letter_prefix(option)[1] for option in row["options_as_presented"]]
    return Presentation(
        option_style="dot" if row["options_as_presented"][0].startswith("A.") else "paren",
        answer_style=row["requested_answer_style"],
        options=options,
        gold_letter=LETTERS[options.index(row["gold_answer_text"])],
    )


@pytest.fixture(scope="session")
def reference_items(stage2_rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Presentation]]:
    return [(row, _reference_presentation(row)) for row in stage2_rows]


@pytest.fixture
def make_item() -> Callable[..., PresentedMCQ]:
    def make(
        mcq_id: str = "m1",
        options: tuple[str, ...] = ("Red", "Blue", "Green", "Orange"),
        gold_letter: str = "B",
        answer_style: AnswerStyle = "paren_letter",
    ) -> PresentedMCQ:
        mcq = MCQ(
            mcq_id=mcq_id,
            image_id="img1",
            question="What colour is the iris?",
            options=list(options),
            answer=options[LETTERS.index(gold_letter)],
            reasoning_type="recognition",
        )
        presentation = Presentation(
            option_style="paren",
            answer_style=answer_style,
            options=list(options),
            gold_letter=gold_letter,
        )
        return PresentedMCQ(mcq=mcq, presentation=presentation)

    return make


@pytest.fixture
def make_short() -> Callable[..., SimpleCot]:
    def make(
        text: str,
        mcq_id: str = "m1",
        index: int = 0,
        finish_reason: FinishReason = "stop",
        stand_in: bool = False,
    ) -> SimpleCot:
        return SimpleCot(
            cot_id=stable_id("cot", mcq_id, index, text),
            mcq_id=mcq_id,
            image_id="img1",
            sample_index=index,
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=10,
            completion_tokens=len(text.split()),
            model="vlm",
            stand_in=stand_in,
        )

    return make


@pytest.fixture
def make_long() -> Callable[..., LongCot]:
    def make(
        short: SimpleCot,
        continuation: str,
        short_think: str = "The iris looks green.",
        index: int = 0,
        cue: str = "Wait,",
        finish_reason: FinishReason = "stop",
    ) -> LongCot:
        return LongCot(
            long_id=stable_id("long", short.cot_id, index, continuation),
            cot_id=short.cot_id,
            mcq_id=short.mcq_id,
            image_id=short.image_id,
            sample_index=index,
            short_think=short_think,
            separator="\n\n",
            cue=cue,
            continuation=continuation,
            finish_reason=finish_reason,
            attempts=1,
            prompt_tokens=50,
            completion_tokens=len(continuation.split()),
            model="reasoner",
        )

    return make
