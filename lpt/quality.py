"""Data-quality gates per stage: a shard's records in, a typed verdict out (no Dagster).

Each gate measures one rate and compares it with a threshold from `ChecksConfig`. A shard
with fewer than `min_rows` rows to measure over passes with a note instead: on a handful of
samples a rate is noise, and failing on noise would block good shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from lpt.config import ChecksConfig
from lpt.records import DpoPair, Label, LongCot, PresentedMCQ, Quarantined, SimpleCot, Verified

# Quarantine rows that annotate a response rather than refuse an MCQ.
_NOTE_REASONS = frozenset({"truncated_response"})
_CORRECT = {"short": frozenset({Label.O}), "long": frozenset({Label.O_O, Label.X_O})}


class QualityResult(BaseModel):
    """One gate's verdict on one shard, worded for a person reading the UI."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    check: str
    passed: bool
    value: float | None  # the measured rate; None when there was nothing to measure
    threshold: str  # e.g. ">= 0.5", "<= 0.3", "in [0.02, 0.98]"
    rows: int  # how many rows the rate is measured over
    judged: bool  # False: too few rows to judge, passed with a note
    reason: str


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _gate(
    check: str, what: str, hits: int, total: int, threshold: str, ok: Callable[[float], bool], min_rows: int
) -> QualityResult:
    """The shared verdict: `ok(value)` decides once there are at least `min_rows` rows."""
    value = _rate(hits, total)
    measured = f"{what} {value} ({hits}/{total})" if value is not None else f"no rows to measure {what} on"
    if value is None or total < min_rows:
        return QualityResult(
            check=check,
            passed=True,
            value=value,
            threshold=threshold,
            rows=total,
            judged=False,
            reason=f"{measured}: too few rows to judge (fewer than {min_rows}); passed without judging",
        )
    passed = bool(ok(value))
    verdict = "within" if passed else "outside"
    return QualityResult(
        check=check,
        passed=passed,
        value=value,
        threshold=threshold,
        rows=total,
        judged=True,
        reason=f"{measured} is {verdict} the threshold {threshold}",
    )


def mcq_validity(
    mcqs: Sequence[PresentedMCQ], quarantined: Sequence[Quarantined], config: ChecksConfig
) -> QualityResult:
    """Valid MCQs among everything the ask model proposed: each refused draft (bad options,
    answer given away, near duplicate, schema break) and each response that yielded nothing
    (unparsable, engine error) counts as one proposal. Low: the ask prompt or model is broken."""
    refused = sum(1 for q in quarantined if q.reason not in _NOTE_REASONS)
    low = config.min_mcq_validity
    return _gate(
        "mcq_validity",
        "MCQ validity rate",
        len(mcqs),
        len(mcqs) + refused,
        f">= {low}",
        lambda v: v >= low,
        config.min_rows,
    )


def parse_rate(shorts: Sequence[Verified], config: ChecksConfig) -> QualityResult:
    """Short CoTs whose answer could be parsed and graded, among those that finished (cut-off
    ones are the truncation gate's business). Low: the VLM ignores the output format."""
    finished = [r for r in shorts if r.kind == "short" and r.drop_reason not in ("truncated", "engine_error")]
    graded = sum(1 for r in finished if r.label is not None)
    low = config.min_parse_rate
    return _gate("parse_rate", "parse rate", graded, len(finished), f">= {low}", lambda v: v >= low, config.min_rows)


def truncation_rate(
    traces: Sequence[SimpleCot] | Sequence[LongCot], limit: float, config: ChecksConfig
) -> QualityResult:
    """Traces the engine cut at the token limit (after the stage's retry, for long CoTs).
    High: max_tokens is too small for the model, or it loops."""
    cut = sum(1 for t in traces if t.finish_reason == "length")
    return _gate(
        "truncation_rate", "truncation rate", cut, len(traces), f"<= {limit}", lambda v: v <= limit, config.min_rows
    )


def leak_rate(rows: Sequence[Verified], config: ChecksConfig) -> QualityResult:
    """Graded traces dropped because their own text leaks the setup (the description, the
    text: `leak:`; meta-commentary about it: `setup:`); a long trace dropped only for its short CoT's leak is counted once, at the short
    one. High: the reasoner prompt invites citing the description."""
    graded = [r for r in rows if r.label is not None]
    leaked = sum(1 for r in graded if (r.drop_reason or "").startswith(("leak:", "setup:")))
    high = config.max_leak_rate
    return _gate("leak_rate", "leak rate", leaked, len(graded), f"<= {high}", lambda v: v <= high, config.min_rows)


def accuracy_band(
    rows: Sequence[Verified], kind: str, band: tuple[float, float], config: ChecksConfig
) -> QualityResult:
    """Accuracy of the graded traces of one kind (short: O; long: O_O and X_O) within
    [low, high]. Too low: the model, prompt or grader is broken; too high: the questions are
    too easy to teach anything."""
    graded = [r for r in rows if r.kind == kind and r.label is not None]
    correct = sum(1 for r in graded if r.label in _CORRECT[kind])
    low, high = band
    return _gate(
        f"{kind}_accuracy",
        f"{kind}-CoT accuracy",
        correct,
        len(graded),
        f"in [{low}, {high}]",
        lambda v: low <= v <= high,
        config.min_rows,
    )


def pair_balance(pairs: Sequence[DpoPair], mcqs: int, config: ChecksConfig) -> QualityResult:
    """No pair type above `max_pair_type_share` of the shard's pairs, and at least one pair
    once the shard has `min_mcqs_for_pairs` MCQs. Unbalanced: DPO would learn one contrast
    only; none: grading or mining is broken (every MCQ all right or all wrong)."""
    high = config.max_pair_type_share
    threshold = f"largest type share <= {high}; some pairs from >= {config.min_mcqs_for_pairs} MCQs"
    if not pairs:
        enough = mcqs >= config.min_mcqs_for_pairs
        return QualityResult(
            check="pair_balance",
            passed=not enough,
            value=None,
            threshold=threshold,
            rows=0,
            judged=enough,
            reason=f"no DPO pairs from {mcqs} MCQs"
            + (
                " (enough MCQs that some were expected)"
                if enough
                else f": too few MCQs to expect pairs (fewer than {config.min_mcqs_for_pairs})"
            ),
        )
    kind, top = Counter(p.pair_type.value for p in pairs).most_common(1)[0]
    return _gate(
        "pair_balance", f"share of {kind} pairs", top, len(pairs), threshold, lambda v: v <= high, config.min_rows
    )
