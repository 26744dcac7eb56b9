"""Turning engine outputs into stage records: pure functions, one per generation stage."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from lpt.config import AskConfig, ThinkHarderConfig, VerifyConfig
from lpt.parse import drafts_from_json, drafts_from_tagged, validate_drafts
from lpt.prompts import ChatPrompt, choose_cue, ensure_full_stop, present, think_harder_prompt
from lpt.records import (
    Caption,
    FinishReason,
    LongCot,
    PresentedMCQ,
    Quarantined,
    Record,
    SimpleCot,
    Verified,
    stable_id,
)
from lpt.scoring import McqScores, top_k_cots
from lpt.verify import verify_short


def mcqs_from_response(
    caption: Caption, text: str, finish_reason: FinishReason, config: AskConfig
) -> tuple[list[PresentedMCQ], list[Quarantined]]:
    """Parse, validate and present one ask response; everything refused is quarantined with a
    reason: engine_error, truncated_response (a note: what was parsed is still kept),
    unparsable (the parser's reason in the detail), or a validation reason from
    `MCQ_REASONS`."""
    if finish_reason == "error":
        refused = Quarantined(
            stage="mcqs",
            item_id=caption.image_id,
            reason="engine_error",
            detail="the engine reported an error for this response",
        )
        return [], [refused]
    quarantined: list[Quarantined] = []
    if finish_reason == "length":
        quarantined.append(
            Quarantined(
                stage="mcqs",
                item_id=caption.image_id,
                reason="truncated_response",
                detail="the ask response hit the token limit; questions parsed from it are kept",
            )
        )
    primary, fallback = (
        (drafts_from_json, drafts_from_tagged)
        if config.structured_output
        else (drafts_from_tagged, drafts_from_json)
    )
    drafts, errors = primary(text)
    if not drafts:
        # The other format, tolerantly; when it finds nothing either, the reasons stay the
        # expected format's ("invalid_item:0:options"), not the fallback's "no_questions".
        fallback_drafts, fallback_errors = fallback(text)
        if fallback_drafts:
            drafts, errors = fallback_drafts, fallback_errors
    quarantined += [
        Quarantined(stage="mcqs", item_id=caption.image_id, reason="unparsable", detail=error)
        for error in errors
    ]
    mcqs, invalid = validate_drafts(caption.image_id, drafts, config.min_question_similarity_to_drop)
    return [present(mcq) for mcq in mcqs], quarantined + invalid


def simple_cot_id(mcq_id: str, request_id: str, sample_index: int) -> str:
    return stable_id("short", mcq_id, request_id, sample_index)


class ContinuationPlan(Record):
    """One reasoner request: a short CoT, a cue and separator, and which samples it yields."""

    cot: SimpleCot
    short_think: str
    cue: str
    separator: str
    sample_indices: list[int]
    prompt: ChatPrompt


def plan_continuations(
    items: dict[str, PresentedMCQ],
    captions: dict[str, Caption],
    shorts: list[SimpleCot],
    think_harder: ThinkHarderConfig,
    verify: VerifyConfig,
    scores: Sequence[McqScores] = (),
) -> list[ContinuationPlan]:
    """Which short CoTs to extend and how. Samples that drew the same cue and separator share
    one request (n > 1), which saves prompt processing on every engine.

    With `expand_top_k_by_reward` = k > 0, a scored MCQ keeps only its k best-rewarded short
    CoTs of each label (`scores`: the shard's rationale scores); a short CoT its MCQ's scores
    leave out repeats a scored one's reasoning word for word and is not extended either. An
    MCQ with no scores (its scoring was refused) keeps them all."""
    candidates: list[tuple[SimpleCot, PresentedMCQ, Verified]] = []
    labels: dict[str, str] = {}
    for cot in sorted(shorts, key=lambda c: c.cot_id):
        item = items.get(cot.mcq_id)
        if item is None:
            continue
        graded: Verified = verify_short(cot, item, verify)
        if graded.kept and graded.label is not None and graded.label.value in think_harder.expand_labels:
            candidates.append((cot, item, graded))
            labels[cot.cot_id] = graded.label.value
    k = think_harder.expand_top_k_by_reward
    if k:
        best = top_k_cots(scores, k, labels)
        scored = {s.mcq_id for s in scores}
        candidates = [c for c in candidates if c[0].cot_id in best or c[0].mcq_id not in scored]
    plans: list[ContinuationPlan] = []
    for cot, item, graded in candidates:
        short_think = ensure_full_stop(graded.think)
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index in range(think_harder.sampling.n):
            groups[choose_cue(cot, index, think_harder)].append(index)
        for (cue, separator), indices in sorted(groups.items()):
            prompt = think_harder_prompt(item, captions[cot.image_id], short_think, cue, separator)
            plans.append(
                ContinuationPlan(
                    cot=cot,
                    short_think=short_think,
                    cue=cue,
                    separator=separator,
                    sample_indices=indices,
                    prompt=prompt.model_copy(update={"key": cot.cot_id}),
                )
            )
    return plans


def long_cot(
    plan: ContinuationPlan,
    sample_index: int,
    text: str,
    finish_reason: FinishReason,
    *,
    attempts: int,
    prompt_tokens: int,
    completion_tokens: int,
    model: str,
) -> LongCot:
    return LongCot(
        long_id=stable_id("long", plan.cot.cot_id, plan.cue, plan.separator, sample_index),
        cot_id=plan.cot.cot_id,
        mcq_id=plan.cot.mcq_id,
        image_id=plan.cot.image_id,
        sample_index=sample_index,
        short_think=plan.short_think,
        separator=plan.separator,
        cue=plan.cue,
        continuation=text,
        finish_reason=finish_reason,
        attempts=attempts,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=model,
    )
