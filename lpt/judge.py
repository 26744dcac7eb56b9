"""The optional LLM judge over kept long CoTs.

Word lists and phrase patterns (lpt/verify.py) catch most leaks, but not every way a trace can
go wrong: a reflection that argues for one option and then answers another, or talk about the
setup in words no list foresaw ("as I was asked to pretend"). The judge engine reads each kept
long trace (question, options, gold answer, the short CoT, the reflection added after the cue,
the final answer) and replies with a small JSON verdict. Findings the config lists in `drop`
take the trace out of SFT and DPO with that reason; the others are kept and only recorded.
A reply that cannot be read is a `judge_no_verdict` finding with the reason, never a crash.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lpt.config import JudgeConfig
from lpt.parse import encodable
from lpt.prompts import ChatPrompt
from lpt.records import LETTERS, JudgeVerdict, LongCot, PresentedMCQ, Verified

INCONSISTENT = "judge_inconsistent"
SETUP_REFERENCE = "judge_setup_reference"
NO_VERDICT = "judge_no_verdict"

JUDGE_SYSTEM = (
    "You review reasoning written by another model for a question about a photo, and report what you find as JSON only."
)

JUDGE_INSTRUCTION = (
    "A model answered a multiple-choice question about a photo. It reasoned for a while; then "
    'it was made to keep thinking, its added reflection starting with a cue such as "Wait,"; '
    "then it gave its final answer. It worked from a written account of the photo, but was told "
    "to reason as if it were looking at the photo itself.\n\n"
    "Check two things.\n"
    "1. reflection_consistent: does the added reflection lead to the final answer given? Say "
    "false when the reflection argues for one option and the final answer names another, or "
    "when the reflection never settles on the answer given. Correctness does not matter here: "
    "the correct option is shown only to help you follow the reasoning.\n"
    "2. refers_to_setup: does the reasoning (either part) talk about how it was produced rather "
    "than about the photo: an account, description, caption or text it was given, a user, or "
    "instructions it was told to follow? Writing that is visible in the photo itself (a sign, a "
    "label) does not count.\n\n"
    'Reply with one JSON object: "reason" (one or two sentences), then '
    '"reflection_consistent" and "refers_to_setup" (true or false).'
)

# Failed decodes allowed before a reply counts as holding no JSON: each may scan to the end of
# the text, and a degenerate reply can open thousands of braces.
_MAX_FAILED_DECODES = 50


class JudgeReply(BaseModel):
    """The judge's reply as its JSON schema asks for it (guided decoding enforces the schema;
    servers without it may add keys, which are ignored). The reason comes first, so the judge
    writes out what it saw before it rules."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False})
    # The bound is the schema's (it keeps guided replies short), not the parser's: a longer
    # reason from a server without guided decoding still gives a verdict.
    reason: str = Field(json_schema_extra={"maxLength": 300})
    reflection_consistent: bool
    refers_to_setup: bool


def judge_json_schema() -> dict[str, Any]:
    """JudgeReply's JSON schema, for the engine's guided decoding."""
    return JudgeReply.model_json_schema()


def judged_traces(verified: Sequence[Verified]) -> list[Verified]:
    """The traces the judge reads: kept, labelled long ones, by trace id."""
    return sorted(
        (r for r in verified if r.kind == "long" and r.kept and r.label is not None), key=lambda r: r.trace_id
    )


def reflection(row: Verified, long: LongCot) -> str:
    """The text the reasoner added after the short CoT: the cue and what followed it."""
    return row.think.removeprefix(long.short_think).strip()


def judge_prompt(item: PresentedMCQ, long: LongCot, row: Verified) -> ChatPrompt:
    """The judge's prompt for one long trace (text only: the judge reads, it does not look)."""
    p = item.presentation
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, p.options, strict=True))
    user = (
        f"{JUDGE_INSTRUCTION}\n\n"
        f"Question: {item.mcq.question}\n{options}\n"
        f"Correct option: {p.gold_letter}. {p.gold_text}\n\n"
        f"Reasoning before the cue:\n{long.short_think or '(none)'}\n\n"
        f"Added reflection:\n{reflection(row, long)}\n\n"
        f"Final answer: {row.answer_raw if row.answer_raw is not None else row.answer}"
    )
    return ChatPrompt(key=row.trace_id, system=JUDGE_SYSTEM, user=user)


def _first_object(text: str) -> Any:
    """The first JSON object in the text (inside ``` fences or prose), or None."""
    decoder = json.JSONDecoder()
    failed = 0
    start = text.find("{")
    while start != -1 and failed <= _MAX_FAILED_DECODES:
        try:
            value, _ = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            failed += 1
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def parse_reply(text: str, finish_reason: str) -> JudgeReply | str:
    """The judge's reply, or why it cannot be used: judge_invalid_unicode, judge_truncated (cut
    by the token limit before its JSON closed), judge_no_json, judge_invalid:<field>."""
    if not encodable(text):
        return "judge_invalid_unicode"
    value = _first_object(text)
    if value is None:
        return "judge_truncated" if finish_reason == "length" else "judge_no_json"
    try:
        return JudgeReply.model_validate(value)
    except ValidationError as exc:
        location = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "object"
        return f"judge_invalid:{location}"


def _verdict(row: Verified, findings: list[str], config: JudgeConfig, **fields: Any) -> JudgeVerdict:
    return JudgeVerdict(
        trace_id=row.trace_id,
        mcq_id=row.mcq_id,
        image_id=row.image_id,
        label=row.label.value if row.label else None,
        findings=findings,
        drop_reason=next((f for f in findings if f in config.drop), None),
        **fields,
    )


def verdict_from_reply(row: Verified, text: str, finish_reason: str, config: JudgeConfig) -> JudgeVerdict:
    """The verdict on one trace from the judge's raw reply; an unusable reply is a
    `judge_no_verdict` finding with its reason in `error`."""
    reply = parse_reply(text, finish_reason)
    if isinstance(reply, str):
        return no_verdict(row, reply, text, config)
    findings = [INCONSISTENT] * (not reply.reflection_consistent) + [SETUP_REFERENCE] * reply.refers_to_setup
    return _verdict(
        row,
        findings,
        config,
        consistent=reply.reflection_consistent,
        setup_reference=reply.refers_to_setup,
        reason=reply.reason.strip(),
        error=None,
    )


def no_verdict(row: Verified, error: str, detail: str, config: JudgeConfig) -> JudgeVerdict:
    """A trace the judge gave no usable verdict on (`error` says why; `detail` is the reply or
    the engine's words, cut short)."""
    return _verdict(row, [NO_VERDICT], config, consistent=None, setup_reference=None, reason=detail[:300], error=error)


def apply_verdicts(verified: Sequence[Verified], verdicts: Sequence[JudgeVerdict]) -> list[Verified]:
    """The verified rows with the judge's drops applied: a kept trace with a drop reason is no
    longer kept, and carries the judge's reason; flagged traces stay as they were."""
    drops = {v.trace_id: v.drop_reason for v in verdicts if v.drop_reason}
    return [
        row.model_copy(update={"kept": False, "drop_reason": drops[row.trace_id]})
        if row.kept and row.trace_id in drops
        else row
        for row in verified
    ]


def summary(verdicts: Sequence[JudgeVerdict]) -> dict[str, Any]:
    """Figures for metadata and the demo: what the judge found, what it dropped (by reason) and
    what it only flagged on traces it kept, and why replies could not be read."""
    found = Counter(f for v in verdicts for f in v.findings)
    return {
        "judged": len(verdicts),
        "consistent": sum(v.consistent is True for v in verdicts),
        INCONSISTENT: found[INCONSISTENT],
        SETUP_REFERENCE: found[SETUP_REFERENCE],
        NO_VERDICT: found[NO_VERDICT],
        "dropped": dict(sorted(Counter(v.drop_reason for v in verdicts if v.drop_reason).items())),
        "flagged": dict(sorted(Counter(f for v in verdicts if not v.drop_reason for f in v.findings).items())),
        "no_verdict_reasons": dict(sorted(Counter(v.error for v in verdicts if v.error).items())),
    }
