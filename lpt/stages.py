"""The stages that ask an engine, as objects (lpt/stage.py): stage 1 asks for MCQs, stage 2
thinks briefly, LaCoT scoring scores the short CoTs, stage 3 thinks harder, the optional judge
reviews the long CoTs; and the pure functions turning their engines' outputs into records."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lpt.config import AskConfig, PipelineConfig, ThinkHarderConfig, VerifyConfig
from lpt.judge import judge_json_schema, judge_prompt, judged_traces, no_verdict, verdict_from_reply
from lpt.judge import summary as judge_summary
from lpt.parse import drafts_from_json, drafts_from_tagged, mcq_json_schema, validate_drafts
from lpt.prompts import (
    ChatPrompt,
    ask_prompt,
    choose_cue,
    ensure_full_stop,
    present,
    think_answer_regex,
    think_harder_prompt,
    think_prompt,
)
from lpt.records import (
    Caption,
    FinishReason,
    JudgeVerdict,
    LongCot,
    McqScores,
    PresentedMCQ,
    Quarantined,
    Record,
    SimpleCot,
    Verified,
    stable_id,
)
from lpt.scoring import Rationale, rationales, score_mcq, targets, top_k_cots
from lpt.scoring import summary as scoring_summary
from lpt.stage import (
    Ask,
    Attempt,
    Counts,
    EngineView,
    Figure,
    Histogram,
    Inputs,
    Json,
    LoadedEngine,
    Parsed,
    Plan,
    Reply,
    RetryPolicy,
    Rows,
    ShardOutcome,
    Stage,
    every_row,
    refused_by_engine,
)
from lpt.tables import CAPTIONS, JUDGE_VERDICTS, LONG_COTS, MCQS, RATIONALE_SCORES, SIMPLE_COTS, VERIFIED
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
            stage=MCQS.name,
            item_id=caption.image_id,
            reason="engine_error",
            detail="the engine reported an error for this response",
        )
        return [], [refused]
    quarantined: list[Quarantined] = []
    if finish_reason == "length":
        quarantined.append(
            Quarantined(
                stage=MCQS.name,
                item_id=caption.image_id,
                reason="truncated_response",
                detail="the ask response hit the token limit; questions parsed from it are kept",
            )
        )
    primary, fallback = (
        (drafts_from_json, drafts_from_tagged) if config.structured_output else (drafts_from_tagged, drafts_from_json)
    )
    drafts, errors = primary(text)
    if not drafts:
        # The other format, tolerantly; when it finds nothing either, the reasons stay the
        # expected format's ("invalid_item:0:options"), not the fallback's "no_questions".
        fallback_drafts, fallback_errors = fallback(text)
        if fallback_drafts:
            drafts, errors = fallback_drafts, fallback_errors
    quarantined += [
        Quarantined(stage=MCQS.name, item_id=caption.image_id, reason="unparsable", detail=error) for error in errors
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


def stand_in_mode(engine: LoadedEngine, stand_in_allowed: bool) -> bool:
    """True when stage 2 (and its scoring) runs on the description instead of the image
    (never silently)."""
    if engine.supports_images:
        return False
    if stand_in_allowed:
        return True
    raise ValueError(
        f"the vlm engine ({engine.name}: {engine.model}) cannot take images; use a VLM, or set "
        "think.caption_stand_in = true to let a text model read the description instead"
    )


class AskStage(Stage[Caption, PresentedMCQ]):
    """Four-option questions that need a close look at the image, validated and presented."""

    table = MCQS
    role = "ask"
    deps = (CAPTIONS, "usable_captions")  # skipped where no shard of the run has a caption
    reads = (CAPTIONS,)
    hands_over_to = (SIMPLE_COTS, "vlm")

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config.ask
        self.schema = mcq_json_schema(self.config.questions_per_image) if self.config.structured_output else None

    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[Caption, PresentedMCQ]:
        return Plan(work={shard: list(rows) for shard, rows in inputs[CAPTIONS].items()})

    def ask(self, item: Caption, attempt: Attempt) -> Ask:
        return Ask(prompt=ask_prompt(item, self.config), sampling=self.config.sampling, json_schema=self.schema)

    def parse(self, item: Caption, reply: Reply, attempt: Attempt) -> Parsed[PresentedMCQ]:
        if reply.error or not reply.completions:
            return Parsed(quarantined=[refused_by_engine(self.name, item.image_id, reply)])
        completion = reply.completions[0]
        items, refused = mcqs_from_response(item, completion.text, completion.finish_reason, self.config)
        return Parsed(items, refused)

    def figures(self, shard: ShardOutcome[Caption, PresentedMCQ]) -> dict[str, Figure]:
        made = shard.rows
        return {
            "rows_in": len(shard.work),
            **shard.written(),
            "mcqs_per_image": round(len(made) / max(len(shard.work), 1), 2),
            "reasoning_types": Counts(Counter(i.mcq.reasoning_type for i in made), "reasoning_type"),
            "sample_rows": Rows(
                [
                    {"question": i.mcq.question, "options": " / ".join(i.mcq.options), "answer": i.mcq.answer}
                    for i in made
                ]
            ),
        }


@dataclass(frozen=True)
class Think:
    """One presented MCQ for stage 2, with its caption and how this run perceives the image."""

    item: PresentedMCQ
    caption: Caption
    stand_in: bool
    model: str


class ThinkStage(Stage[Think, SimpleCot]):
    """Short CoTs from the VLM, several per presented MCQ, with finish reasons."""

    table = SIMPLE_COTS
    role = "vlm"
    deps = (MCQS,)
    reads = (CAPTIONS, MCQS)

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config.think
        self.leak_words = config.verify.leak_words
        # rationale_scores, when on, runs next on the same engine (long_cots waits for it)
        self.hands_over_to = (RATIONALE_SCORES, "vlm") if config.scoring.enabled else (LONG_COTS, "reasoner")

    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[Think, SimpleCot]:
        captions = {c.image_id: c for c in every_row(inputs, CAPTIONS)}
        stand_in = stand_in_mode(engine.get(), self.config.caption_stand_in)
        return Plan(
            work={
                shard: [Think(item, captions[item.mcq.image_id], stand_in, engine.model) for item in items]
                for shard, items in inputs[MCQS].items()
            },
            run_wide={
                "perception": "caption stand-in (text model read the description, not the image)"
                if stand_in
                else "image",
                "stand_in": stand_in,
            },
        )

    def ask(self, item: Think, attempt: Attempt) -> Ask:
        think = self.config
        return Ask(
            prompt=think_prompt(item.item, item.caption, stand_in=item.stand_in),
            sampling=think.sampling,
            image_max_side=think.image_max_side,
            regex=think_answer_regex(think.sampling.max_tokens, item.item.presentation)
            if think.constrain_format
            else None,
            banned_words=self.leak_words if item.stand_in and think.ban_leak_words_in_stand_in else (),
        )

    def parse(self, item: Think, reply: Reply, attempt: Attempt) -> Parsed[SimpleCot]:
        mcq = item.item.mcq
        refused = [] if reply.completions and not reply.error else [refused_by_engine(self.name, mcq.mcq_id, reply)]
        cots = [
            SimpleCot(
                cot_id=simple_cot_id(mcq.mcq_id, reply.request_id, index),
                mcq_id=mcq.mcq_id,
                image_id=mcq.image_id,
                sample_index=index,
                text=completion.text,
                finish_reason=completion.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                model=item.model,
                stand_in=item.stand_in,
            )
            for index, completion in enumerate(reply.completions)
        ]
        return Parsed(cots, refused)

    def figures(self, shard: ShardOutcome[Think, SimpleCot]) -> dict[str, Figure]:
        cots = shard.rows
        return {
            "rows_in": len(shard.work),
            **shard.written(),
            "truncated": sum(c.finish_reason == "length" for c in cots),
            "sample_rows": Rows([{"mcq_id": c.mcq_id, "finish": c.finish_reason, "text": c.text} for c in cots]),
        }

    def run_figures(self, plan: Plan[Think, SimpleCot], engine: Mapping[str, Figure]) -> dict[str, Figure]:
        return {**plan.run_wide, **engine}


@dataclass(frozen=True)
class Target:
    """One scoring request: a short CoT (`cot_id`) followed by one option (`letter`), of the
    MCQ at `position` in the shard's scored MCQs."""

    position: int
    item: PresentedMCQ
    scored: list[Rationale]
    caption: Caption
    stand_in: bool
    cot_id: str
    letter: str
    text: str


class ScoringStage(Stage[Target, McqScores]):
    """LaCoT's likelihood matrix per MCQ (short CoT x option, mean log-probability per
    token), each rationale's reward with the gold answer, the Best-of-N answer, its margin
    over the gold one, and suspect keys."""

    table = RATIONALE_SCORES  # no quarantine: a refused request leaves its MCQ unscored, with a warning
    role = "vlm"
    deps = (SIMPLE_COTS,)
    reads = (CAPTIONS, MCQS, SIMPLE_COTS)
    hands_over_to = (LONG_COTS, "reasoner")

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config.think
        self.margin = config.scoring.suspect_margin

    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[Target, McqScores]:
        captions = {c.image_id: c for c in every_row(inputs, CAPTIONS)}
        stand_in = stand_in_mode(engine.get(), self.config.caption_stand_in)
        work: dict[str, list[Target]] = {}
        for shard, items in inputs[MCQS].items():
            by_mcq: dict[str, list[SimpleCot]] = defaultdict(list)
            for cot in inputs[SIMPLE_COTS][shard]:
                by_mcq[cot.mcq_id].append(cot)
            scored_mcqs = [(item, scored) for item in items if (scored := rationales(item, by_mcq[item.mcq.mcq_id]))]
            work[shard] = [
                Target(position, item, scored, captions[item.mcq.image_id], stand_in, cot_id, letter, text)
                for position, (item, scored) in enumerate(scored_mcqs)
                for cot_id, letter, text in targets(item, scored)
            ]
        return Plan(work=work)

    def ask(self, item: Target, attempt: Attempt) -> Ask:
        return Ask(
            prompt=think_prompt(item.item, item.caption, stand_in=item.stand_in),
            sampling=self.config.sampling,
            n=1,
            max_tokens=1,
            image_max_side=self.config.image_max_side,
            target=item.text,
        )

    def parse(self, item: Target, reply: Reply, attempt: Attempt) -> Parsed[Any]:
        if reply.target_logprobs:
            return Parsed([((item.cot_id, item.letter), reply.target_logprobs)])
        # refused (too long for the model, say): its MCQ goes unscored
        return Parsed(warning=f"scoring request {reply.request_id} refused: {reply.error}")

    def collect(self, work: Sequence[Target], found: Mapping[int, Sequence[Any]]) -> list[McqScores]:
        """An MCQ is scored when every one of its targets has its log-probabilities."""
        mcqs = {target.position: (target.item, target.scored) for target in work}
        by_position: dict[int, dict[tuple[str, str], list[float]]] = defaultdict(dict)
        for index, parts in found.items():
            for key, values in parts:
                by_position[work[index].position][key] = values
        return [
            score_mcq(item, scored, by_position[position], self.margin)
            for position, (item, scored) in mcqs.items()
            if len(by_position[position]) == 4 * len(scored)
        ]

    def figures(self, shard: ShardOutcome[Target, McqScores]) -> dict[str, Figure]:
        scores = shard.rows
        figures = scoring_summary(scores)
        plain: dict[str, Any] = {k: v for k, v in figures.items() if k != "suspect_keys" and v is not None}
        return {
            "rows_out": len(scores),
            **plain,
            "suspect_keys": Json(figures["suspect_keys"]),
            "rewards": Histogram([r for s in scores for r in s.rewards], "rationale reward"),
            **shard.engine,
            "sample_rows": Rows(
                [
                    {
                        "mcq_id": s.mcq_id,
                        "gold": s.gold_letter,
                        "bin": s.bin_letter,
                        "margin": round(s.margin, 3),
                        "suspect": s.suspect,
                    }
                    for s in scores
                ]
            ),
        }


@dataclass(frozen=True)
class Continuation:
    """One reasoner request of stage 3, with what its rows need."""

    plan: ContinuationPlan
    item: PresentedMCQ
    model: str


class ThinkHarderStage(Stage[Continuation, LongCot]):
    """The reasoner continues each short CoT after a cue; a cut-off continuation gets one
    retry with a larger budget (joining the stream as soon as it is cut) and is kept with
    finish_reason "length" if cut again."""

    table = LONG_COTS
    role = "reasoner"

    def __init__(self, config: PipelineConfig) -> None:
        self.config = cfg = config.think_harder
        self.verify = config.verify
        self.banned = config.verify.leak_words if cfg.ban_leak_words else ()
        self.retry = RetryPolicy(cfg.retry_max_tokens) if cfg.retry_max_tokens > cfg.sampling.max_tokens else None
        # after the scores when they are on: the VLM serves both before the reasoner loads
        self.deps = (SIMPLE_COTS, *((RATIONALE_SCORES,) if config.scoring.enabled else ()))
        # the best-rewarded short CoTs only, when asked (the config makes sure scoring is on)
        self.reads = (CAPTIONS, MCQS, SIMPLE_COTS, *((RATIONALE_SCORES,) if cfg.expand_top_k_by_reward else ()))
        # the judge, when on and left to the reasoner's settings, picks the loaded model up
        self.hands_over_to = (JUDGE_VERDICTS, "judge") if config.judge.enabled else None

    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[Continuation, LongCot]:
        captions = {c.image_id: c for c in every_row(inputs, CAPTIONS)}
        items = {i.mcq.mcq_id: i for i in every_row(inputs, MCQS)}
        scores = inputs.get(RATIONALE_SCORES, {})
        work = {
            shard: [
                Continuation(plan, items[plan.cot.mcq_id], engine.model)
                for plan in plan_continuations(items, captions, shorts, self.config, self.verify, scores.get(shard, ()))
            ]
            for shard, shorts in inputs[SIMPLE_COTS].items()
        }
        k = self.config.expand_top_k_by_reward
        return Plan(work=work, run_wide={"expand_top_k_by_reward": k} if k else {})

    def ask(self, item: Continuation, attempt: Attempt) -> Ask:
        cfg, plan = self.config, item.plan
        if attempt.retry_of is None:
            n, max_tokens, salt = len(plan.sample_indices), cfg.sampling.max_tokens, ""
        else:
            assert self.retry is not None
            n, max_tokens, salt = 1, self.retry.max_tokens, f"retry-{plan.sample_indices[attempt.retry_of]}"
        return Ask(
            prompt=plan.prompt,
            sampling=cfg.sampling,
            n=n,
            max_tokens=max_tokens,
            regex=think_answer_regex(max_tokens, item.item.presentation) if cfg.constrain_format else None,
            banned_words=self.banned,
            salt=salt,
        )

    def parse(self, item: Continuation, reply: Reply, attempt: Attempt) -> Parsed[LongCot]:
        plan = item.plan
        made: dict[str, Any] = dict(prompt_tokens=reply.prompt_tokens, model=item.model)
        if attempt.retry_of is not None:
            completion = reply.completions[0] if reply.completions else None
            return Parsed(
                [
                    long_cot(
                        plan,
                        plan.sample_indices[attempt.retry_of],
                        completion.text if completion else "",
                        completion.finish_reason if completion else "error",
                        attempts=2,
                        completion_tokens=completion.completion_tokens if completion else 0,
                        **made,
                    )
                ]
            )
        refused = (
            [] if reply.completions and not reply.error else [refused_by_engine(self.name, plan.cot.cot_id, reply)]
        )
        return Parsed(
            [
                long_cot(
                    plan,
                    sample,
                    completion.text,
                    completion.finish_reason,
                    attempts=1,
                    completion_tokens=completion.completion_tokens,
                    **made,
                )
                for slot, (sample, completion) in enumerate(zip(plan.sample_indices, reply.completions))
                if slot not in attempt.retried
            ],
            refused,
        )

    def collect(self, work: Sequence[Continuation], found: Mapping[int, Sequence[Any]]) -> list[LongCot]:
        """A request's samples in sample order (a retried one comes back later)."""
        return [row for _, rows in sorted(found.items()) for row in sorted(rows, key=lambda row: row.sample_index)]

    def figures(self, shard: ShardOutcome[Continuation, LongCot]) -> dict[str, Figure]:
        rows = shard.rows
        return {
            "rows_in": len({c.plan.cot.cot_id for c in shard.work}),
            **shard.written(),
            "retried_truncated": sum(r.attempts == 2 for r in rows),
            "still_truncated": sum(r.finish_reason == "length" for r in rows),
            "mean_continuation_tokens": round(sum(r.completion_tokens for r in rows) / max(len(rows), 1), 1),
            "continuation_tokens": Histogram([r.completion_tokens for r in rows], "continuation tokens"),
            "cues": Counts(Counter(r.cue for r in rows), "cue"),
            "sample_rows": Rows([{"cot_id": r.cot_id, "cue": r.cue, "continuation": r.continuation} for r in rows]),
        }


@dataclass(frozen=True)
class Judged:
    """One kept long CoT for the judge, with its MCQ."""

    item: PresentedMCQ
    long: LongCot
    row: Verified


class JudgeStage(Stage[Judged, JudgeVerdict]):
    """The judge's verdict on each kept long CoT: is its added reflection consistent with its
    final answer, does it refer to its setup; which findings drop the trace (`judge.drop`)
    and which are only flagged. An unreadable reply is quarantined as judge_no_verdict."""

    table = JUDGE_VERDICTS
    role = "judge"
    group = "curate"
    deps = (VERIFIED,)
    reads = (MCQS, LONG_COTS, VERIFIED)

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config.judge
        self.schema = judge_json_schema() if self.config.structured_output else None

    def _recorded(self, verdict: JudgeVerdict) -> Parsed[JudgeVerdict]:
        """A verdict, quarantined too when the judge gave none."""
        refused = (
            [Quarantined(stage=self.name, item_id=verdict.trace_id, reason=verdict.error, detail=verdict.reason)]
            if verdict.error
            else []
        )
        return Parsed([verdict], refused)

    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[Judged, JudgeVerdict]:
        items = {i.mcq.mcq_id: i for i in every_row(inputs, MCQS)}
        longs = {c.long_id: c for c in every_row(inputs, LONG_COTS)}
        work: dict[str, list[Judged]] = {}
        settled: dict[str, list[Parsed[JudgeVerdict]]] = {}
        for shard, verified in inputs[VERIFIED].items():
            judged = judged_traces(verified)
            work[shard] = [
                Judged(items[r.mcq_id], longs[r.trace_id], r)
                for r in judged
                if r.mcq_id in items and r.trace_id in longs
            ]
            # a trace whose MCQ or long CoT is no longer stored cannot be shown to the judge
            settled[shard] = [
                self._recorded(no_verdict(r, "judge_missing_input", "its MCQ or long CoT is not stored", self.config))
                for r in judged
                if r.mcq_id not in items or r.trace_id not in longs
            ]
        return Plan(work=work, settled=settled, run_wide={"drops": Json(list(self.config.drop))})

    def ask(self, item: Judged, attempt: Attempt) -> Ask:
        return Ask(
            prompt=judge_prompt(item.item, item.long, item.row), sampling=self.config.sampling, json_schema=self.schema
        )

    def parse(self, item: Judged, reply: Reply, attempt: Attempt) -> Parsed[JudgeVerdict]:
        if reply.error or not reply.completions:
            return self._recorded(
                no_verdict(item.row, "engine_refused", reply.error or "the engine returned no completion", self.config)
            )
        completion = reply.completions[0]
        return self._recorded(verdict_from_reply(item.row, completion.text, completion.finish_reason, self.config))

    def figures(self, shard: ShardOutcome[Judged, JudgeVerdict]) -> dict[str, Figure]:
        verdicts = shard.rows
        figures = judge_summary(verdicts)
        names = ("judged", "consistent", "judge_inconsistent", "judge_setup_reference", "judge_no_verdict")
        return {
            "rows_in": len(shard.work) + len(shard.settled),
            **shard.written(),
            **{name: figures[name] for name in names},
            "judge_drops": Counts(figures["dropped"], "reason"),
            "judge_flags_kept": Counts(figures["flagged"], "finding"),
            "sample_rows": Rows(
                sorted(
                    (
                        {
                            "trace_id": v.trace_id,
                            "label": v.label,
                            "findings": ", ".join(v.findings) or "none",
                            "dropped": v.drop_reason or "no",
                            "judge": v.reason,
                        }
                        for v in verdicts
                    ),
                    key=lambda r: r["findings"] == "none",
                )
            ),
        }


# Every engine stage, in pipeline order; scoring and the judge run where their config turns them on.
STAGES: tuple[type[Stage[Any, Any]], ...] = (AskStage, ThinkStage, ScoringStage, ThinkHarderStage, JudgeStage)


def stages_on(config: PipelineConfig) -> list[type[Stage[Any, Any]]]:
    """The engine stages this config runs."""
    off = {ScoringStage: not config.scoring.enabled, JudgeStage: not config.judge.enabled}
    return [stage for stage in STAGES if not off.get(stage)]
