"""Parsers for model outputs: reasoning traces and MCQ sets, plus MCQ validation.

Every parser here is total: any string gives a result and machine-readable error reasons,
never an exception, because model output is untrusted input.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from lpt.markup import chat_markup
from lpt.records import LETTERS, MCQ, MCQDraft, Quarantined, Record, stable_id
from lpt.tables import MCQS

# Bump when a rule below changes what is kept, so the assets built with the old rules show stale:
# MCQ_RULES for MCQ parsing and validation (stage 1), TRACE_RULES for trace parsing and grading
# (which short CoTs stage 3 extends, and everything verified).
MCQ_RULES_VERSION = "mcq-rules-2"
TRACE_RULES_VERSION = "trace-rules-2"

# --------------------------------------------------------------------------- text helpers


_ASCII_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # Cc in ASCII, less tab and line breaks


def _invisible(character: str) -> bool:
    return character not in "\t\n\r" and unicodedata.category(character) in ("Cf", "Cc")


def clean_unicode(text: str) -> str:
    """Text as a reader sees it: NFKC folds compatibility forms ("（Ｂ）" is "(B)", NBSP is a
    space) and invisible format and control characters (zero-width spaces and joiners,
    direction marks, NUL) are removed. Look-alikes from other scripts (Cyrillic "В") and
    combining marks without a precomposed form ("B\u0301") stay what they are: not letters."""
    if text.isascii():  # its own NFKC form, and its only invisible characters are controls
        return _ASCII_CONTROLS.sub("", text)
    folded = unicodedata.normalize("NFKC", text)
    invisible = [c for c in set(folded) if _invisible(c)]  # judged once per distinct character
    return folded.translate(dict.fromkeys(map(ord, invisible))) if invisible else folded


def encodable(text: str) -> bool:
    """False for strings holding lone surrogates, which no file or id can store as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_PUNCTUATION = re.compile(r"[^\w\s]|_")


@functools.lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Comparison key for option texts: case, punctuation, spacing and Unicode compatibility
    forms never decide a match. Remembered: grading compares every trace with the same few
    option texts."""
    return " ".join(_PUNCTUATION.sub(" ", clean_unicode(text).casefold()).split())


_LETTER_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*")


def strip_letter_prefix(text: str) -> tuple[str | None, str]:
    """Split a leading option letter ("(B) ", "B. ", "B) ") from a text: (letter, rest)."""
    match = _LETTER_PREFIX.match(text)
    if not match:
        return None, text.strip()
    return match.group(1) or match.group(2), text[match.end() :].strip()


def strip_option_letters(options: list[str]) -> list[str]:
    """Drop letters a model wrote inside option texts, but only when each option carries its
    own position's letter, so a genuine text such as "A. Lincoln" in slot C survives."""
    split = [strip_letter_prefix(option) for option in options]
    if split and all(letter == chr(ord("A") + i) for i, (letter, _) in enumerate(split)):
        return [rest for _, rest in split]
    return [option.strip() for option in options]


# --------------------------------------------------------------------------- reasoning traces


class ParsedCot(Record):
    """A reasoning trace split into its think part and its final answer; `error` is one of
    TRACE_ERRORS when no answer could be taken from it."""

    think: str | None
    answer: str | None
    error: str | None


TRACE_ERRORS = frozenset(
    {
        "invalid_unicode",  # lone surrogates: nothing downstream can store the text
        "empty",  # blank or invisible-only output
        "chat_markup",  # control-token text (see lpt.markup): it must not reach a model or a sample
        "no_think_close",  # "</think>" never came: no tags at all, or the output was cut
        "tag_in_think",  # "<think>", "<answer>" or "</answer>" inside the reasoning
        "no_answer",  # nothing in "<answer>" tags after "</think>"
        "unclosed_answer",  # "<answer>" opened and never closed
        "multiple_answers",  # answer blocks that disagree, or a closed one plus an open one
        "empty_answer",  # "<answer></answer>", or only invisible characters inside
    }
)

_THINK_OPEN = re.compile(r"^(?:\s*<think>)+", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_TAG_IN_THINK = re.compile(r"<think>|</?answer>", re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)


def _parse_trace(text: str, strip_think: bool) -> ParsedCot:
    if not encodable(text):
        return ParsedCot(think=None, answer=None, error="invalid_unicode")
    if not clean_unicode(text).strip():
        return ParsedCot(think=None, answer=None, error="empty")
    if chat_markup(text):
        return ParsedCot(think=None, answer=None, error="chat_markup")
    body = _THINK_OPEN.sub("", text, count=1)
    close = _THINK_CLOSE.search(body)
    if close is None:
        return ParsedCot(think=body.strip(), answer=None, error="no_think_close")
    think = body[: close.start()]
    think = think.strip() if strip_think else think.rstrip()
    if _TAG_IN_THINK.search(think):
        # Kept, it would teach nested tags or a second, possibly different, answer.
        return ParsedCot(think=think, answer=None, error="tag_in_think")
    tail = body[close.end() :]
    answers = [m.group(1).strip() for m in _ANSWER_BLOCK.finditer(tail)]
    leftover_open = _ANSWER_OPEN.search(_ANSWER_BLOCK.sub("", tail)) is not None
    if not answers:
        error = "unclosed_answer" if leftover_open else "no_answer"
        return ParsedCot(think=think, answer=None, error=error)
    if len(set(answers)) > 1 or leftover_open:
        return ParsedCot(think=think, answer=None, error="multiple_answers")
    if not clean_unicode(answers[0]).strip():
        return ParsedCot(think=think, answer=None, error="empty_answer")
    return ParsedCot(think=think, answer=answers[0], error=None)


def parse_cot(text: str) -> ParsedCot:
    """Parse a VLM output written after a pre-filled "<think>" (tolerates the tag repeated)."""
    return _parse_trace(text, strip_think=True)


def parse_continuation(text: str) -> ParsedCot:
    """Parse a reasoner continuation; the same format as a short CoT, but its think part keeps
    its leading whitespace because it continues a sentence already begun in the pre-fill."""
    return _parse_trace(text, strip_think=False)


# --------------------------------------------------------------------------- MCQ sets

ReasoningType = Literal["recognition", "spatial", "counting", "attribute", "text_in_scene", "causal_commonsense"]

# Keywords that map an ask model's free-text type ("Spatial and Relational Reasoning") onto
# our fixed vocabulary; the first hit in this order wins.
_TYPE_KEYWORDS: tuple[tuple[str, ReasoningType], ...] = (
    ("spatial", "spatial"),
    ("relation", "spatial"),
    ("position", "spatial"),
    ("count", "counting"),
    ("quantif", "counting"),
    ("number", "counting"),
    ("causal", "causal_commonsense"),
    ("commonsense", "causal_commonsense"),
    ("common sense", "causal_commonsense"),
    ("texture", "attribute"),  # before "text", which it starts with
    ("text", "text_in_scene"),
    ("ocr", "text_in_scene"),
    ("reading", "text_in_scene"),
    ("attribute", "attribute"),
    ("color", "attribute"),
    ("colour", "attribute"),
    ("recogn", "recognition"),
    ("identif", "recognition"),
)


def canonical_reasoning_type(raw: str) -> str:
    """Our vocabulary for a free-text reasoning type; an unknown type keeps a slug of itself
    so nothing is silently relabelled."""
    lowered = raw.casefold()
    for keyword, canonical in _TYPE_KEYWORDS:
        if re.search(rf"\b{keyword}", lowered):
            return canonical
    return "_".join(normalise(raw).split()) or "unspecified"


class MCQItem(BaseModel):
    """One question as the ask model must emit it under guided decoding. Extra keys are
    ignored when parsing (servers without guided decoding add them) but forbidden by the
    schema the engine enforces."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False})
    # Length bounds keep guided decoding concise: a question and its options fit in the
    # token budget instead of running on until the limit cuts the JSON.
    question: str = Field(min_length=10, max_length=200)
    options: list[Annotated[str, StringConstraints(min_length=1, max_length=80)]] = Field(min_length=4, max_length=4)
    answer_letter: Literal["A", "B", "C", "D"]
    reasoning_type: ReasoningType


class MCQSet(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False})
    questions: list[MCQItem]


def mcq_json_schema(n_questions: int) -> dict[str, Any]:
    """MCQSet's JSON schema with the question count pinned, for the engine's guided decoding."""
    schema = MCQSet.model_json_schema()
    schema["properties"]["questions"]["minItems"] = n_questions
    schema["properties"]["questions"]["maxItems"] = n_questions
    return schema


_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.DOTALL)
# Where a JSON value worth decoding can start: an object with a key, or a list of objects.
# Other brackets ("[[[[", "{{") cannot start an MCQ set, and trying each one is quadratic.
_JSON_START = re.compile(r"\{\s*\"|\[\s*\{")
# Failed decodes allowed per candidate text: each one may scan to the end of the text, so a
# degenerate output (a model repeating '{"a": [' for 100k characters) must not cost minutes.
# A real response needs one decode per question at most.
_MAX_FAILED_DECODES = 200
_QUESTIONS_ARRAY = re.compile(r'"questions"\s*:\s*\[')


def _first_json(text: str) -> Any:
    """The first JSON object or array in text, looking inside ``` fences first; None if none."""
    decoder = json.JSONDecoder()
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        failed = 0
        for start in (m.start() for m in _JSON_START.finditer(candidate)):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (json.JSONDecodeError, RecursionError):
                failed += 1
                if failed > _MAX_FAILED_DECODES:
                    break
                continue
            if isinstance(value, dict) and "questions" in value:
                return value
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return value
    return None


def _salvage_questions(text: str) -> list[Any]:
    """The complete items at the head of a "questions" array that was cut off (the token limit
    stopped the JSON mid-item): each fully written question is still usable."""
    match = _QUESTIONS_ARRAY.search(text)
    if match is None:
        return []
    decoder = json.JSONDecoder()
    items: list[Any] = []
    cursor = match.end()
    while True:
        cursor = len(text) - len(text[cursor:].lstrip(" \t\r\n,"))
        try:
            item, cursor = decoder.raw_decode(text, cursor)
        except (json.JSONDecodeError, RecursionError):
            return items
        items.append(item)


def drafts_from_json(text: str) -> tuple[list[MCQDraft], list[str]]:
    """Drafts from a structured-output response; each item that breaks the schema becomes an
    error reason ("invalid_item:<index>:<field>") instead of failing the whole response.
    Other reasons: invalid_unicode, no_json, no_questions, and truncated_json when only the
    complete items of a cut-off "questions" array could be read."""
    if not encodable(text):
        return [], ["invalid_unicode"]
    errors: list[str] = []
    value = _first_json(text)
    if value is None:
        value = _salvage_questions(text)
        if not value:
            return [], ["no_json"]
        errors.append("truncated_json")
    items = value["questions"] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        return [], ["no_questions"]
    drafts: list[MCQDraft] = []
    for index, raw in enumerate(items):
        try:
            item = MCQItem.model_validate(raw)
        except ValidationError as exc:
            loc = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "item"
            errors.append(f"invalid_item:{index}:{loc}")
            continue
        options = strip_option_letters(item.options)
        drafts.append(
            MCQDraft(
                question=item.question.strip(),
                options=options,
                answer=options[LETTERS.index(item.answer_letter)],
                reasoning_type=item.reasoning_type,
            )
        )
    return drafts, errors


_QUESTION_START = re.compile(r"<question>", re.IGNORECASE)
_REQUIRED_TAGS = ("question", "choices", "answer")


def _tag(block: str, name: str) -> str | None:
    match = re.search(rf"<{name}>(.*?)</{name}>", block, re.IGNORECASE | re.DOTALL)
    return match.group(1).strip() if match else None


def _split_choices(choices: str) -> list[str]:
    """Options from "(A) x (B) y ..." or "A. x B. y ...", one line each or all on one line;
    letters must come in order, which keeps "(B)" inside a text from splitting it."""
    best: list[tuple[int, int]] = []
    for marker in (r"\({}\)", r"(?:^|(?<=\s)){}[.)]"):
        positions: list[tuple[int, int]] = []
        cursor = 0
        for letter in "ABCDEFGH":
            match = re.compile(marker.format(letter)).search(choices, cursor)
            if match is None:
                break
            positions.append(match.span())
            cursor = match.end()
        if len(positions) > len(best):
            best = positions
    sentinel = (len(choices), len(choices))
    return [" ".join(choices[end:next_start].split()) for (_, end), (next_start, _) in pairwise([*best, sentinel])]


_ANSWER_LIST = re.compile(r"\(?[A-D]\)?\.?(?:\s*(?:[,/&;]|\bor\b|\band\b)\s*(?:(?:or|and)\s+)?\(?[A-D]\)?\.?)+")


def _resolve_answer(answer: str, options: list[str]) -> str | None:
    """The option text an answer names: its text, its bare letter ("B", "(B)"), or a letter
    with that same option's text ("(B) Red" where B is Red); the answer as written when it
    names no option, and None when it names several ("A or B", "(B) Red" where Red is A)."""
    keys = [normalise(option) for option in options]
    if normalise(answer) in keys:
        return options[keys.index(normalise(answer))]
    plain = clean_unicode(answer).strip()
    if _ANSWER_LIST.fullmatch(plain):
        return None
    bare = re.fullmatch(r"\(?([A-D])\)?\.?", plain)
    letter, rest = strip_letter_prefix(plain)
    letter = bare.group(1) if bare else letter
    by_letter = LETTERS.index(letter) if letter in LETTERS[: len(options)] else None
    by_text = keys.index(normalise(rest)) if normalise(rest) in keys else None
    if by_letter is not None and by_text is not None and by_letter != by_text:
        return None
    for index in (by_text, by_letter):
        if index is not None:
            return options[index]
    return answer.strip()


def drafts_from_tagged(text: str) -> tuple[list[MCQDraft], list[str]]:
    """Drafts from the tagged fallback format (numbered `<question>…</question> <choices>…
    </choices> <answer>…</answer> <type>…</type>` lines); a block missing a tag becomes an
    error reason ("missing_<tag>:<index>", "no_options:<index>"); also invalid_unicode and
    no_questions for the response as a whole."""
    if not encodable(text):
        return [], ["invalid_unicode"]
    starts = [m.start() for m in _QUESTION_START.finditer(text)]
    blocks = [text[start:stop] for start, stop in pairwise([*starts, len(text)])]
    drafts: list[MCQDraft] = []
    errors: list[str] = []
    for index, block in enumerate(blocks):
        question, choices, answer = (_tag(block, name) for name in _REQUIRED_TAGS)
        if question is None or choices is None or answer is None:
            missing = next(n for n, v in zip(_REQUIRED_TAGS, (question, choices, answer), strict=True) if v is None)
            errors.append(f"missing_{missing}:{index}")
            continue
        options = _split_choices(choices)
        if not options:
            errors.append(f"no_options:{index}")
            continue
        kind = _tag(block, "type")
        resolved = _resolve_answer(answer, options)
        drafts.append(
            MCQDraft(
                question=question,
                options=options,
                answer=answer if resolved is None else resolved,  # several: validation says so
                reasoning_type=canonical_reasoning_type(kind) if kind else "unspecified",
            )
        )
    if not blocks:
        errors.append("no_questions")
    return drafts, errors


# --------------------------------------------------------------------------- validation

_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split()
)


def _tokens(text: str) -> set[str]:
    return set(normalise(text).split())


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _gives_away(question: str, answer: str, options: list[str]) -> bool:
    """True when the answer is written in the question and no other option is. Counts and
    one-character answers are exempt: numbers in a question usually count something else."""
    key = normalise(answer)
    if len(key) < 2 or key.isdigit() or key in _NUMBER_WORDS:
        return False
    padded = f" {normalise(question)} "
    others = [normalise(o) for o in options if normalise(o) != key]
    return f" {key} " in padded and not any(f" {o} " in padded for o in others if o)


MCQ_REASONS = frozenset(
    {
        "invalid_unicode",
        "chat_markup",
        "option_count",
        "empty_field",
        "duplicate_options",
        "ambiguous_answer",
        "answer_not_in_options",
        "answer_in_question",
        "near_duplicate",
    }
)


def validate_drafts(
    image_id: str, drafts: list[MCQDraft], near_duplicate_threshold: float
) -> tuple[list[MCQ], list[Quarantined]]:
    """Keep the drafts a VLM can fairly be graded on; quarantine the rest with a reason code
    from MCQ_REASONS: invalid_unicode, chat_markup (control-token text, see lpt.markup),
    option_count, empty_field, duplicate_options, ambiguous_answer (the key names several
    options), answer_not_in_options, answer_in_question, near_duplicate (token Jaccard with an
    earlier kept question of the same image)."""
    kept: list[MCQ] = []
    quarantined: list[Quarantined] = []
    for draft in drafts:
        fields = [draft.question, *draft.options, draft.answer]
        if not all(encodable(field) for field in fields):
            item_id = stable_id(image_id, *(ascii(field) for field in fields))
            detail = "a field holds lone surrogates, which cannot be stored as UTF-8"
            quarantined.append(Quarantined(stage=MCQS.name, item_id=item_id, reason="invalid_unicode", detail=detail))
            continue
        markup = sorted({token for field in fields for token in chat_markup(field)})
        if markup:
            item_id = stable_id(image_id, *fields)
            detail = f"control-token text {', '.join(markup[:5])}: a server would parse it as chat markup"
            quarantined.append(Quarantined(stage=MCQS.name, item_id=item_id, reason="chat_markup", detail=detail))
            continue
        question = " ".join(draft.question.split())
        options = strip_option_letters(draft.options)
        resolved = _resolve_answer(draft.answer, options)
        answer = draft.answer.strip() if resolved is None else resolved
        mcq_id = stable_id(image_id, question, options, answer)
        keys = [normalise(option) for option in options]
        reason, detail = None, ""
        if len(options) != 4:
            reason, detail = "option_count", f"{len(options)} options, need 4"
        elif not normalise(question) or not all(keys) or not normalise(answer):
            reason, detail = "empty_field", "question, an option or the answer is blank"
        elif len(set(keys)) != 4:
            reason, detail = "duplicate_options", f"options {options} repeat after normalising"
        elif resolved is None:
            reason, detail = "ambiguous_answer", f"answer {answer!r} names several of {options}"
        elif keys.count(normalise(answer)) != 1:
            reason, detail = "answer_not_in_options", f"answer {answer!r} is none of {options}"
        elif _gives_away(question, answer, options):
            reason, detail = "answer_in_question", f"the question spells out {answer!r}"
        else:
            earlier = next(
                (m for m in kept if _jaccard(_tokens(m.question), _tokens(question)) >= near_duplicate_threshold),
                None,
            )
            if earlier is not None:
                reason, detail = (
                    "near_duplicate",
                    f"too close to {earlier.mcq_id}: {earlier.question!r}",
                )
        if reason is not None:
            quarantined.append(Quarantined(stage=MCQS.name, item_id=mcq_id, reason=reason, detail=detail))
            continue
        kept.append(
            MCQ(
                mcq_id=mcq_id,
                image_id=image_id,
                question=question,
                options=options,
                answer=options[keys.index(normalise(answer))],
                reasoning_type=draft.reasoning_type,
            )
        )
    return kept, quarantined
