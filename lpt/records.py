"""Typed records that cross stage boundaries; every table on disk is one of these."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def stable_id(*parts: object) -> str:
    """Content-derived id: the same inputs give the same id on every machine and rerun."""
    payload = json.dumps([str(p) for p in parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Caption(Record):
    """One validated image with its dense description."""

    image_id: str
    source: str
    split: str
    image_path: str  # absolute path or fsspec URL, checked to exist and decode
    description: str
    width: int
    height: int


class Quarantined(Record):
    """An input or output row we refused, with the reason a person can act on."""

    stage: str
    item_id: str
    reason: str
    detail: str = ""


OptionStyle = Literal["paren", "dot"]  # "(A) text" or "A. text"
AnswerStyle = Literal["paren_letter", "dot_letter", "option_text"]  # "(X)", "X.", or the text
LETTERS = ("A", "B", "C", "D")


class MCQDraft(Record):
    """An MCQ as parsed from the ask model's output, before validation."""

    question: str
    options: list[str]
    answer: str  # the gold option's text
    reasoning_type: str


class MCQ(Record):
    """A four-option question about one image, as written by the ask model."""

    mcq_id: str
    image_id: str
    question: str
    options: list[str] = Field(min_length=4, max_length=4)
    answer: str  # the gold option's text
    reasoning_type: str


class Presentation(Record):
    """How an MCQ is shown: shuffled, re-lettered, styled; seeded by the MCQ id."""

    option_style: OptionStyle
    answer_style: AnswerStyle
    options: list[str] = Field(min_length=4, max_length=4)  # texts in presented order
    gold_letter: str

    @property
    def gold_text(self) -> str:
        return self.options[LETTERS.index(self.gold_letter)]


class PresentedMCQ(Record):
    """A valid MCQ with the presentation every later stage (and the training prompt) uses."""

    mcq: MCQ
    presentation: Presentation


class Label(str, Enum):
    O = "O"  # noqa: E741  # the paper's label names: O right, X wrong
    X = "X"
    O_O = "O_O"
    O_X = "O_X"
    X_O = "X_O"
    X_X = "X_X"


class PairType(str, Enum):
    """DPO pair types; compactness pairs (O > O_O) are emitted and typed, the export chooses."""

    O_GT_X = "O>X"
    O_GT_X_X = "O>X_X"
    O_GT_O_X = "O>O_X"
    X_O_GT_X = "X_O>X"
    X_O_GT_X_X = "X_O>X_X"
    O_GT_O_O = "O>O_O"

    @property
    def is_compactness(self) -> bool:
        return self is PairType.O_GT_O_O


FinishReason = Literal["stop", "length", "error"]


class SimpleCot(Record):
    """One short CoT sampled from the VLM for one presented MCQ."""

    cot_id: str
    mcq_id: str
    image_id: str
    sample_index: int
    text: str  # raw output, without the "<think>" pre-fill
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model: str
    stand_in: bool  # True when a text model read the description instead of the image


class LongCot(Record):
    """One reasoner continuation of a short CoT after a cognitive cue."""

    long_id: str
    cot_id: str
    mcq_id: str
    image_id: str
    sample_index: int
    short_think: str  # the short CoT's reasoning, original casing, full stop ensured
    separator: str
    cue: str
    continuation: str  # raw reasoner output after the pre-fill
    finish_reason: FinishReason
    attempts: int  # > 1 when a truncated continuation was retried with a larger budget
    prompt_tokens: int
    completion_tokens: int
    model: str


class Verified(Record):
    """A graded trace (short or long) with its label, its normalised response and its fate."""

    trace_id: str  # cot_id for short traces, long_id for long ones
    kind: Literal["short", "long"]
    mcq_id: str
    image_id: str
    cot_id: str
    long_id: str | None
    label: Label | None  # None when the trace could not be graded
    think: str
    answer_raw: str | None
    answer: str | None  # normalised to the presentation's answer style
    response: str  # "<think>…</think>\n<answer>…</answer>", ready for training
    response_tokens: int
    kept: bool
    drop_reason: str | None
    behaviours: dict[str, int]


class TrainingPrompt(Record):
    """The prompt a trained VLM sees for one MCQ: the stage-2 prompt, with its image."""

    mcq_id: str
    image_id: str
    image_path: str
    system: str
    prompt: str


class SftSample(Record):
    sample_id: str
    trace_id: str
    label: Label
    mcq_id: str
    image_id: str
    cot_id: str
    long_id: str | None
    image_path: str
    system: str
    prompt: str
    response: str


class DpoPair(Record):
    pair_id: str
    pair_type: PairType
    mcq_id: str
    image_id: str
    chosen_id: str
    rejected_id: str
    image_path: str
    system: str
    prompt: str
    chosen: str
    rejected: str


class McqScores(Record):
    """The scores of one MCQ; rows of `likelihoods` follow `cot_ids`, columns the letters."""

    mcq_id: str
    image_id: str
    cot_ids: list[str]
    rationales: list[str]
    solutions: list[str]  # the four answers as written in the requested style, A..D
    likelihoods: list[list[float]]  # [rationale][option]: mean log-probability per token
    rewards: list[float]  # per rationale, its likelihood with the gold answer
    option_scores: list[float] = Field(min_length=4, max_length=4)  # mean over rationales
    gold_letter: str
    bin_letter: str
    margin: float  # option_scores[BiN] - option_scores[gold]: 0 when BiN is gold
    best_index: int  # the rationale with the highest likelihood for the BiN answer
    suspect: bool


class JudgeVerdict(Record):
    """The judge's verdict on one kept long trace, and what curation does with it."""

    trace_id: str  # the long trace's id
    mcq_id: str
    image_id: str
    label: str | None  # the trace's label, for reading the table
    consistent: bool | None  # None: no verdict
    setup_reference: bool | None
    reason: str  # the judge's own words, or why its reply could not be read
    findings: list[str]  # judge_inconsistent, judge_setup_reference, judge_no_verdict
    error: str | None  # why there is no verdict: judge_no_json, judge_truncated, judge_invalid:<field>, …
    drop_reason: str | None  # the first finding the config drops; None: kept (flagged when findings)
