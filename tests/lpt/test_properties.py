"""Property-based tests over every parser and grader, on generated messy model output.

Each strategy composes realistic fragments (tags opened, closed, doubled or missing; option
letters in every common style; option texts; valid, broken and schema-violating JSON;
Unicode oddities; truncation at a random point) and mixes them with arbitrary text. The
properties: no exception escapes; every input ends kept with a value that satisfies the
stage's invariants, or dropped with a reason from the documented vocabulary; the same input
gives the same result; and a well-formed output parses back to what was put in.

Every test runs 2,000 derandomized examples (reproducible in CI, no example database).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpt.config import AskConfig, VerifyConfig
from lpt.grade import GRADE_REASONS, format_answer, grade
from lpt.markup import chat_markup
from lpt.parse import (
    MCQ_REASONS,
    TRACE_ERRORS,
    clean_unicode,
    drafts_from_json,
    drafts_from_tagged,
    encodable,
    normalise,
    parse_continuation,
    parse_cot,
    validate_drafts,
)
from lpt.records import (
    LETTERS,
    MCQ,
    Caption,
    FinishReason,
    Label,
    LongCot,
    Presentation,
    PresentedMCQ,
    SimpleCot,
    Verified,
    stable_id,
)
from lpt.stages import mcqs_from_response
from lpt.verify import find_setup_references, render_response, verify_shard

EXAMPLES = 2000
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VERIFY = VerifyConfig()

# --------------------------------------------------------------------------- fragments

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202e", "\u2066", "\ufeff", "\x00"]
ODDITIES = [
    *INVISIBLE,
    "\u00a0",  # NBSP
    "\u0301",  # combining acute
    "\ud800",  # lone surrogates: unencodable
    "\udfff",
    "😀",
    "👨\u200d👩\u200d👧",
    "\u0410",  # Cyrillic А
    "\u0412",  # Cyrillic В
    "Ｂ",
    "（Ｂ）",
    "\r\n",
    "\t",
    "ﬁ",
    "İ",
    "ß",
]
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", "<answer >"]
OPTION_POOL = [
    "Red",
    "Blue",
    "Green",
    "Black",
    "Two",
    "Three",
    "A reflection of red lights",
    "Red, white, and black",
    "Vitamin C",
    "A. Lincoln",
    "On the left side",
    "Café",
    "B-52 bomber",
    "None of the above",
    "Ｆｕｌｌ ｗｉｄｔｈ",
    "Straße",
    "🙂 smiley",
]
QUESTION_POOL = [
    "What colour is the mug on the table?",
    "How many birds sit on the wire?",
    "Which word is printed on the sign?",
    "Where is the lamp relative to the sofa?",
    "What material is the floor made of?",
    "Why is the street wet in the picture?",
]
LETTER_PATTERN = {letter: re.compile(rf"\({letter}\)", re.IGNORECASE) for letter in LETTERS}

oddity = st.sampled_from(ODDITIES)
# Control-token text of common chat templates, which no kept output may carry.
CHAT_MARKUP = ["<|im_end|>", "<|im_start|>system", "<|eot_id|>", "[INST]", "</s>", "<end_of_turn>"]
junk = st.one_of(st.text(max_size=12), oddity, st.sampled_from(TAGS), st.sampled_from(CHAT_MARKUP))


def _options() -> st.SearchStrategy[list[str]]:
    """Four options, distinct after normalising (the pool's texts all are)."""
    return st.permutations(OPTION_POOL).map(lambda texts: texts[:4])


@st.composite
def presentations(draw: st.DrawFn) -> Presentation:
    return Presentation(
        option_style=draw(st.sampled_from(["paren", "dot"])),
        answer_style=draw(st.sampled_from(["paren_letter", "dot_letter", "option_text"])),
        options=draw(_options()),
        gold_letter=draw(st.sampled_from(LETTERS)),
    )


def _with_invisibles(draw: st.DrawFn, text: str) -> str:
    """Sprinkle characters a reader cannot see; they must never change a verdict."""
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(INVISIBLE)) + text[at:]
    return text


# Forms that designate one option by letter; each must be recognised anywhere in an answer.
STRONG_FORMS = [
    "({L})",
    "({l})",
    "{L}.",
    "{L})",
    "Option {L}",
    "option ({L})",
    "({L}) {T}",
    "{L}. {T}",
    "{T} ({L})",
    "（{W}）",
]
# Forms that designate one option only as the whole answer.
WHOLE_FORMS = [*STRONG_FORMS, "{L}", "{l}", "{L}:", "{T}", "{T}.", "{Tu}", "{W}"]
LEAD_INS = ["", "The answer is ", "Answer: ", "The correct answer is ", "So the answer is "]
WRAPS = ["{}", "**{}**", "`{}`", '"{}"', " {} ", "{}\n"]


def _designate(form: str, letter: str, presentation: Presentation) -> str:
    text = presentation.options[LETTERS.index(letter)]
    return form.format(
        L=letter,
        l=letter.lower(),
        T=text,
        Tu=text.upper(),
        W=chr(ord(letter) - ord("A") + ord("Ａ")),
    )


@st.composite
def single_answers(draw: st.DrawFn, presentation: Presentation) -> tuple[str, str]:
    """An answer naming exactly one option, in any common style: (answer, letter)."""
    letter = draw(st.sampled_from(LETTERS))
    core = _designate(draw(st.sampled_from(WHOLE_FORMS)), letter, presentation)
    answer = draw(st.sampled_from(WRAPS)).format(draw(st.sampled_from(LEAD_INS)) + core)
    return _with_invisibles(draw, answer), letter


@st.composite
def several_answers(draw: st.DrawFn, presentation: Presentation) -> tuple[str, set[str]]:
    """An answer naming two or more options by letter: (answer, the letters named)."""
    letters = draw(st.lists(st.sampled_from(LETTERS), min_size=2, max_size=3))
    parts = [_designate(draw(st.sampled_from(STRONG_FORMS)), x, presentation) for x in letters]
    glue = draw(st.sampled_from([" or ", ", ", "; ", " and ", " / ", " ", "\n", ", not ", " - "]))
    answer = draw(st.sampled_from(LEAD_INS)) + glue.join(parts)
    return _with_invisibles(draw, answer), set(letters)


@st.composite
def messy_answers(draw: st.DrawFn, presentation: Presentation) -> str:
    """Anything an answer tag might hold: designations, option texts, junk, oddities."""
    pieces = st.one_of(
        junk,
        st.sampled_from(presentation.options),
        st.sampled_from(["A", "B", "C", "D", "(", ")", ".", " or ", "Option ", "a", "b"]),
        single_answers(presentation).map(lambda pair: pair[0]),
    )
    return "".join(draw(st.lists(pieces, max_size=8)))


def _visible(text: str) -> str:
    return clean_unicode(text).strip()


_ANY_TAG = re.compile(r"</?think>|</?answer>", re.IGNORECASE)
plain_text = st.text(max_size=40).filter(lambda t: not _ANY_TAG.search(t))


@st.composite
def traces(draw: st.DrawFn, presentation: Presentation) -> tuple[str, str | None, str]:
    """A model output after a pre-filled "<think>": (text, answer put in if well formed, think)."""
    think = draw(st.one_of(plain_text, st.sampled_from(["The iris looks blue.", "Hmm, 1 < 2."])))
    answer = draw(st.one_of(single_answers(presentation).map(lambda p: p[0]), plain_text))
    prefix = draw(st.sampled_from(["", "<think>", "<think>\n", "<think><think>", " <THINK> "]))
    text = f"{prefix}{think}</think>\n<answer>{answer}</answer>"
    if draw(st.booleans()):
        return text, answer.strip() if _visible(answer) else None, think
    # Break it: drop, double or misplace tags, add junk or other answers, cut it short.
    pieces = [prefix, think, "</think>", "\n", "<answer>", answer, "</answer>"]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(pieces)))
        action = draw(st.sampled_from(["drop", "insert", "dup"]))
        if action == "drop" and pieces:
            pieces.pop(min(at, len(pieces) - 1))
        elif action == "insert":
            extra = draw(st.one_of(junk, messy_answers(presentation), st.sampled_from(TAGS)))
            pieces.insert(at, extra)
        elif pieces:
            pieces.insert(at, pieces[min(at, len(pieces) - 1)])
    broken = "".join(pieces)
    if draw(st.booleans()):
        broken = broken[: draw(st.integers(0, len(broken)))]
    return broken, None, think


# --------------------------------------------------------------------------- grader


def _item(presentation: Presentation, mcq_id: str = "m1") -> PresentedMCQ:
    mcq = MCQ(
        mcq_id=mcq_id,
        image_id="img1",
        question="What colour is the iris?",
        options=presentation.options,
        answer=presentation.gold_text,
        reasoning_type="attribute",
    )
    return PresentedMCQ(mcq=mcq, presentation=presentation)


@st.composite
def graded_answers(draw: st.DrawFn) -> tuple[Presentation, str | None, str, Any]:
    """(presentation, answer, kind, expected): kind is single, several, messy or text."""
    presentation = draw(presentations())
    kind = draw(st.sampled_from(["single", "several", "messy", "text"]))
    if kind == "single":
        answer, letter = draw(single_answers(presentation))
        return presentation, answer, kind, letter
    if kind == "several":
        answer, letters = draw(several_answers(presentation))
        return presentation, answer, kind, letters
    if kind == "messy":
        return presentation, draw(messy_answers(presentation)), kind, None
    return presentation, draw(st.one_of(st.none(), st.text(max_size=60))), kind, None


@PROPERTY
@given(graded_answers())
def test_grader_properties(case: tuple[Presentation, str | None, str, Any]) -> None:
    presentation, answer, kind, expected = case
    verdict = grade(answer, presentation)
    assert verdict == grade(answer, presentation)  # deterministic
    assert (verdict.letter is None) == (verdict.reason is not None)
    assert verdict.reason is None or verdict.reason in GRADE_REASONS
    assert verdict.letter is None or verdict.letter in LETTERS
    assert verdict.correct == (verdict.letter == presentation.gold_letter)
    if kind == "single":  # round trip: the one option named is the one graded
        assert verdict.letter == expected, (answer, presentation.options)
    if kind == "several" and len(expected) > 1:
        assert verdict.letter is None and verdict.reason in ("several_options", "no_option")
    if verdict.correct:
        # Strict: a correct answer names no other option in brackets ("(A)", "（Ａ）", "(a)")
        # and mentions the gold option by letter or by text.
        assert answer is not None
        seen = clean_unicode(answer)
        for letter in LETTERS:
            if letter != presentation.gold_letter:
                assert not LETTER_PATTERN[letter].search(seen), (answer, presentation.options)
        gold = presentation.gold_letter
        assert gold in seen.upper() or normalise(presentation.gold_text) in normalise(seen)


@PROPERTY
@given(presentations(), st.sampled_from(["({L})", "{L}.", "Option {L}", "{L}"]), st.data())
def test_grader_never_reads_look_alike_letters(presentation: Presentation, form: str, data: st.DataObject) -> None:
    """Cyrillic "А", "В", "С" look like A, B, C but are other letters: they designate nothing."""
    look_alike = {"A": "\u0410", "B": "\u0412", "C": "\u0421"}
    letter = data.draw(st.sampled_from(sorted(look_alike)))
    verdict = grade(form.format(L=look_alike[letter]), presentation)
    assert (verdict.letter, verdict.reason) == (None, "no_option")


# --------------------------------------------------------------------------- think/answer


@st.composite
def trace_cases(draw: st.DrawFn) -> tuple[Presentation, str, str | None, str]:
    presentation = draw(presentations())
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.one_of(st.text(max_size=200), st.lists(junk, max_size=30).map("".join)))
        return presentation, text, None, ""
    text, answer, think = draw(traces(presentation))
    return presentation, text, answer, think


@PROPERTY
@given(trace_cases(), st.data())
def test_trace_parser_properties(case: tuple[Presentation, str, str | None, str], data: st.DataObject) -> None:
    _, text, answer, think = case
    for parse in (parse_cot, parse_continuation):
        parsed = parse(text)
        assert parsed == parse(text)
        assert (parsed.answer is None) == (parsed.error is not None)
        assert parsed.error is None or parsed.error in TRACE_ERRORS
        assert parsed.think is None or encodable(parsed.think)  # storable as UTF-8
        if parsed.error is None:
            assert parsed.think is not None and not _ANY_TAG.search(parsed.think)
            assert _visible(parsed.answer or "")
            assert not re.search(r"</?answer>", parsed.answer or "", re.IGNORECASE)
            assert not chat_markup(parsed.think or "") and not chat_markup(parsed.answer or "")
        if answer is not None:  # round trip
            assert parsed.answer == answer, (text, parsed)
            if parse is parse_cot:
                assert parsed.think == think.strip()
    if answer is not None:
        # Cut anywhere, the output gives the same answer or none.
        cut = text[: data.draw(st.integers(0, len(text)))]
        assert parse_cot(cut).answer in (None, answer)


# --------------------------------------------------------------------------- MCQ JSON

_VALID_TYPES = ["recognition", "spatial", "counting", "attribute", "text_in_scene"]
_JSON_ERROR = re.compile(r"invalid_unicode|no_json|no_questions|truncated_json|invalid_item:\d+:[\w.]+")
_TAGGED_ERROR = re.compile(r"invalid_unicode|no_questions|missing_(?:question|choices|answer):\d+|no_options:\d+")


@st.composite
def json_items(draw: st.DrawFn) -> tuple[Any, bool]:
    """(item, valid): a question object, possibly breaking the schema in one or more ways."""
    options = draw(_options())
    item: dict[str, Any] = {
        "question": draw(st.sampled_from(QUESTION_POOL)),
        "options": options,
        "answer_letter": draw(st.sampled_from(LETTERS)),
        "reasoning_type": draw(st.sampled_from(_VALID_TYPES)),
    }
    valid = True
    for _ in range(draw(st.integers(0, 2))):
        valid = False
        breakage = draw(
            st.sampled_from(
                [
                    "drop_key",
                    "three",
                    "five",
                    "duplicate",
                    "bad_letter",
                    "wrong_type",
                    "short_question",
                    "bad_type",
                    "extra_key",
                    "not_object",
                    "oddity",
                ]
            )
        )
        if breakage == "drop_key":
            item.pop(draw(st.sampled_from(sorted(item))), None)
        elif breakage == "three":
            item["options"] = options[:3]
        elif breakage == "five":
            item["options"] = [*options, "Purple"]
        elif breakage == "duplicate":
            item["options"] = [options[0], options[0].lower(), *options[2:]]
        elif breakage == "bad_letter":
            item["answer_letter"] = draw(st.sampled_from(["E", "b", "", 1, None, "(B)"]))
        elif breakage == "wrong_type":
            key = draw(st.sampled_from(["question", "options", "answer_letter"]))
            item[key] = draw(st.sampled_from([3, None, [], {"x": 1}, [1, 2, 3, 4], True]))
        elif breakage == "short_question":
            item["question"] = "Why?"
        elif breakage == "bad_type":
            item["reasoning_type"] = "vibes"
        elif breakage == "extra_key":
            item["note"] = "extra"
        elif breakage == "not_object":
            return draw(st.sampled_from(["a string", 7, None, ["x"]])), False
        elif isinstance(item.get("question"), str):
            item["question"] = item["question"][:-1] + draw(oddity) + "?"
    return item, valid


@st.composite
def json_responses(draw: st.DrawFn) -> tuple[str, list[Any] | None, bool]:
    """(text, items if every one must be accounted for, truncated). A bare list counts as an
    MCQ set only when it holds objects only."""
    items = [i for i, _ in draw(st.lists(json_items(), min_size=0, max_size=5))]
    shape = draw(st.sampled_from(["object", "list", "wrapped"]))
    countable = shape != "list" or all(isinstance(i, dict) for i in items)
    value: Any = {"questions": items} if shape != "list" else items
    if shape == "wrapped":
        value = {"questions": items, "image": "x"}
    indent = draw(st.sampled_from([None, 2]))
    body = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=indent)
    before = draw(st.sampled_from(["", "Sure! Here you go:\n", "```json\n", "Output: [1] {x}\n"]))
    after = "\n```" if before == "```json\n" else draw(st.sampled_from(["", "\nDone.", " }"]))
    text = before + body + after
    truncated = draw(st.integers(0, 3)) == 0
    if truncated:
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 5)) == 0:
        text = draw(junk) + text + draw(junk)
        return text, None, truncated
    return text, items if countable and encodable(text) else None, truncated


def _check_drafts(drafts: list[Any], errors: list[str], pattern: re.Pattern[str]) -> None:
    assert drafts or errors  # nothing disappears without a reason
    for error in errors:
        assert pattern.fullmatch(error), error
    for draft in drafts:
        assert encodable(draft.question) and all(encodable(o) for o in draft.options)


def _check_validated(drafts: list[Any]) -> None:
    kept, quarantined = validate_drafts("img", drafts, 0.9)
    assert len(kept) + len(quarantined) == len(drafts)  # each draft kept or quarantined, once
    for q in quarantined:
        assert q.reason in MCQ_REASONS and q.detail
    for mcq in kept:
        keys = [normalise(o) for o in mcq.options]
        assert len(set(keys)) == 4 and all(keys)
        assert mcq.options.count(mcq.answer) == 1
        assert not any(chat_markup(text) for text in (mcq.question, *mcq.options))
    assert validate_drafts("img", drafts, 0.9) == (kept, quarantined)


@PROPERTY
@given(st.one_of(json_responses(), st.text(max_size=200).map(lambda t: (t, None, False))))
def test_json_mcq_parser_properties(case: tuple[str, list[Any] | None, bool]) -> None:
    text, items, truncated = case
    drafts, errors = drafts_from_json(text)
    assert (drafts, errors) == drafts_from_json(text)
    _check_drafts(drafts, errors, _JSON_ERROR)
    for draft in drafts:
        assert len(draft.options) == 4 and draft.answer in draft.options
    if items is not None and not truncated and items:
        # Every item is accounted for: a draft, or an error naming its index.
        invalid = {int(e.split(":")[1]) for e in errors if e.startswith("invalid_item:")}
        assert len(drafts) + len(invalid) == len(items)
        valid = [i for n, i in enumerate(items) if n not in invalid]
        for draft, item in zip(drafts, valid, strict=True):  # round trip
            assert draft.question == item["question"].strip()
            assert draft.answer == item["options"][LETTERS.index(item["answer_letter"])].strip()
    if items is not None and truncated and drafts:
        # Salvaged from a cut-off array: only complete items, in order.
        full, _ = drafts_from_json(json.dumps({"questions": items}))
        assert drafts == full[: len(drafts)]
    _check_validated(drafts)


# --------------------------------------------------------------------------- MCQ tagged


@st.composite
def tagged_blocks(draw: st.DrawFn) -> tuple[str, dict[str, Any] | None]:
    """(block, expected): expected holds the options and answer of an intact block."""
    options = draw(_options())
    letter = draw(st.sampled_from(LETTERS))
    style = draw(st.sampled_from(["paren", "dot"]))
    glue = draw(st.sampled_from([" ", "\n"]))
    marks = [f"({x})" if style == "paren" else f"{x}." for x in LETTERS]
    choices = glue.join(f"{m} {o}" for m, o in zip(marks, options, strict=True))
    gold = options[LETTERS.index(letter)]
    other = options[(LETTERS.index(letter) + 1) % 4]
    answer_form = draw(st.sampled_from(["letter", "paren", "text", "both", "clash", "several"]))
    answer = {
        "letter": letter,
        "paren": f"({letter})",
        "text": gold,
        "both": f"({letter}) {gold}",
        "clash": f"({letter}) {other}",  # the letter and the text disagree
        "several": f"{letter} or {LETTERS[(LETTERS.index(letter) + 1) % 4]}",
    }[answer_form]
    question = draw(st.sampled_from(QUESTION_POOL))
    parts = [
        f"<question> {question} </question>",
        f"<choices>{glue}{choices}{glue}</choices>",
        f"<answer> {answer} </answer>",
        f"<type> {draw(st.sampled_from(['Counting', 'Spatial reasoning', 'OCR', '']))} </type>",
    ]
    intact = draw(st.integers(0, 3)) > 0
    if not intact:
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(parts) - 1))
            parts[at] = draw(
                st.one_of(
                    st.just(""),
                    junk,
                    st.just(parts[at].replace("</", "<")),  # unclosed
                    st.just(parts[at] + parts[at]),  # doubled
                    st.just(re.sub(r"\(?[BC]\)?\.? ", "", parts[at], count=1)),  # 3 options
                )
            )
    block = f"{draw(st.sampled_from(['', '1. ', '2) ']))}{glue.join(parts)}"
    if not intact:
        return block, None
    return block, {"options": options, "answer": gold, "form": answer_form}


@st.composite
def tagged_responses(draw: st.DrawFn) -> tuple[str, list[dict[str, Any] | None], bool]:
    blocks = draw(st.lists(tagged_blocks(), min_size=0, max_size=4))
    preamble = draw(st.sampled_from(["", "Here are the questions:\n"]))
    text = preamble + "\n".join(b for b, _ in blocks)
    truncated = draw(st.integers(0, 3)) == 0
    if truncated:
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 5)) == 0:
        text = text.replace(" ", draw(oddity), draw(st.integers(1, 3)))
        truncated = True  # no longer intact
    return text, [expected for _, expected in blocks], truncated


@PROPERTY
@given(st.one_of(tagged_responses(), st.text(max_size=200).map(lambda t: (t, [], True))))
def test_tagged_mcq_parser_properties(
    case: tuple[str, list[dict[str, Any] | None], bool],
) -> None:
    text, expected, truncated = case
    drafts, errors = drafts_from_tagged(text)
    assert (drafts, errors) == drafts_from_tagged(text)
    _check_drafts(drafts, errors, _TAGGED_ERROR)
    if not truncated and expected and all(e is not None for e in expected):
        assert errors == [] and len(drafts) == len(expected)
        kept, quarantined = validate_drafts("img", drafts, 1.01)
        reasons = [q.reason for q in quarantined]
        for draft, want in zip(drafts, expected, strict=True):  # round trip
            assert want is not None
            assert draft.options == want["options"]
            if want["form"] in ("clash", "several"):
                assert draft.answer not in want["options"]
            else:
                assert draft.answer == want["answer"]
        assert reasons.count("ambiguous_answer") == sum(
            1 for w in expected if w is not None and w["form"] in ("clash", "several")
        )
        assert len(kept) + len(quarantined) == len(drafts)
    _check_validated(drafts)


# --------------------------------------------------------------------------- ask stage

CAPTION = Caption(
    image_id="img1",
    source="sample",
    split="train",
    image_path="/tmp/img1.png",
    description="A blue mug on a table.",
    width=64,
    height=64,
)
_STAGE_REASONS = MCQ_REASONS | {"engine_error", "truncated_response", "unparsable"}


@PROPERTY
@given(
    st.one_of(
        json_responses().map(lambda c: c[0]),
        tagged_responses().map(lambda c: c[0]),
        st.text(max_size=200),
    ),
    st.sampled_from(["stop", "length", "error"]),
    st.booleans(),
)
def test_mcqs_from_response_properties(text: str, finish: FinishReason, structured: bool) -> None:
    config = AskConfig(structured_output=structured)
    items, refused = mcqs_from_response(CAPTION, text, finish, config)
    assert (items, refused) == mcqs_from_response(CAPTION, text, finish, config)
    for q in refused:
        assert q.reason in _STAGE_REASONS and q.detail
        if q.reason == "unparsable":
            assert _JSON_ERROR.fullmatch(q.detail) or _TAGGED_ERROR.fullmatch(q.detail)
    assert any(q.reason == "truncated_response" for q in refused) == (finish == "length")
    if finish == "error":
        assert items == [] and [q.reason for q in refused] == ["engine_error"]
    if not items:
        assert refused  # an empty result always says why
    for item in items:
        mcq, shown = item.mcq, item.presentation
        assert sorted(shown.options) == sorted(mcq.options)
        assert shown.gold_text == mcq.answer and len({normalise(o) for o in mcq.options}) == 4
        assert all(encodable(t) for t in [mcq.question, *mcq.options])


# --------------------------------------------------------------------------- verify_shard

_FIXED_DROPS = (
    TRACE_ERRORS
    | GRADE_REASONS
    | {
        "truncated",
        "engine_error",
        "short_ungraded",
        "duplicate",
        "unknown_mcq",
        "unknown_short",
    }
)
_RESPONSE = re.compile(r"<think>\n(.*)\n</think>\n<answer>(.*)</answer>", re.DOTALL)


def _drop_reason_known(reason: str) -> bool:
    if reason in _FIXED_DROPS:
        return True
    own = reason.removeprefix("short_")
    if own.startswith("setup:"):
        return bool(find_setup_references(own.removeprefix("setup:"), VERIFY.setup_phrases))
    return own.startswith("leak:") and own.removeprefix("leak:") in VERIFY.leak_words


@st.composite
def shard_cases(draw: st.DrawFn) -> tuple[PresentedMCQ, SimpleCot, LongCot | None, Any]:
    """One presented MCQ, one short trace and maybe one continuation of it."""
    presentation = draw(presentations())
    item = _item(presentation)
    text, answer, _ = draw(traces(presentation))
    finish = draw(st.sampled_from(["stop", "stop", "stop", "length", "error"]))
    short = SimpleCot(
        cot_id=stable_id("cot", ascii(text)),
        mcq_id=draw(st.sampled_from(["m1", "m1", "m1", "other"])),
        image_id="img1",
        sample_index=0,
        text=text,
        finish_reason=finish,
        prompt_tokens=10,
        completion_tokens=len(text.split()),
        model="vlm",
        stand_in=draw(st.booleans()),
    )
    long = None
    if draw(st.booleans()):
        continuation, _, _ = draw(traces(presentation))
        long = LongCot(
            long_id=stable_id("long", ascii(continuation)),
            cot_id=draw(st.sampled_from([short.cot_id, short.cot_id, "ghost"])),
            mcq_id=short.mcq_id,
            image_id="img1",
            sample_index=0,
            short_think=draw(st.sampled_from(["The iris looks blue.", "Green."])),
            separator=draw(st.sampled_from(["\n\n", " "])),
            cue=draw(st.sampled_from(["Wait,", "Hmm,", "Alternatively,"])),
            continuation=continuation,
            finish_reason=draw(st.sampled_from(["stop", "stop", "length"])),
            attempts=1,
            prompt_tokens=50,
            completion_tokens=len(continuation.split()),
            model="reasoner",
        )
    return item, short, long, answer


def _check_row(row: Verified, item: PresentedMCQ) -> None:
    assert row.kept == (row.drop_reason is None)
    assert row.drop_reason is None or _drop_reason_known(row.drop_reason), row.drop_reason
    for value in (row.think, row.response, row.answer or "", row.answer_raw or ""):
        assert encodable(value)  # every row can be written to Parquet
    if row.label is not None:
        letter = grade(row.answer, item.presentation).letter
        assert letter is not None and row.answer == format_answer(letter, item.presentation)
        correct = row.label in (Label.O, Label.O_O, Label.X_O)
        assert correct == (letter == item.presentation.gold_letter)
    if row.kept:
        assert row.label is not None and row.answer is not None
        assert row.response == render_response(row.think, row.answer)
        match = _RESPONSE.fullmatch(row.response)
        assert match and not _ANY_TAG.search(match.group(1)) and not _ANY_TAG.search(row.answer)
    elif row.label is None:
        assert row.answer is None and row.response == ""


@PROPERTY
@given(shard_cases())
def test_verify_shard_properties(case: tuple[PresentedMCQ, SimpleCot, LongCot | None, Any]) -> None:
    item, short, long, answer = case
    longs = [long] if long is not None else []
    rows = verify_shard([item], [short], longs, VERIFY)
    assert rows == verify_shard([item], [short], longs, VERIFY)
    assert [r.trace_id for r in rows] == [short.cot_id] + [x.long_id for x in longs]
    for row in rows:
        _check_row(row, item)
    short_row = rows[0]
    if short.finish_reason == "length" and short.mcq_id == "m1":
        assert short_row.drop_reason == "truncated"
    if long is not None and long.finish_reason == "length" and rows[1].drop_reason != "unknown_mcq":
        assert rows[1].drop_reason in ("truncated", "unknown_short")
    if answer is not None and short.finish_reason == "stop" and short.mcq_id == "m1":
        # Round trip: a well-formed output is graded on the answer put in.
        assert short_row.answer_raw == answer
