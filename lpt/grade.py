"""Strict grading of an MCQ answer against the presented gold option.

An answer counts as correct only when it designates exactly one option and that option is
the gold one. The original project accepted any option's text as correct; here an answer
that names another option, or several, is never correct.
"""

from __future__ import annotations

import re

from lpt.parse import clean_unicode, normalise
from lpt.records import LETTERS, Presentation, Record

_WRAPPERS = re.compile(r"[*`_]+|^[\s\"'“”‘’]+|[\s\"'“”‘’]+$")
_LEAD_IN = re.compile(
    r"^(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:correct\s+|final\s+|best\s+)?"
    r"(?:answer|choice|option)\s*(?:is|would be|:)?\s*:?\s*",
    re.IGNORECASE,
)
_LIST = re.compile(r"[A-D](?:(?:\s*[,/&]\s*(?:(?:or|and)\s+)?|\s+(?:or|and)\s+)[A-D])+\.?")
_LEADING = re.compile(r"^(?:\(([A-Da-d])\)|([A-D])[.):])\s*")
_TRAILING = re.compile(r"\s*\(([A-Da-d])\)$")
_MARKERS = re.compile(
    r"\(([A-Da-d])\)"  # (B) or (b) anywhere
    r"|^([A-D])(?:[.):]|$|(?=[^\S\n]*\n))"  # B. / B) / B: / B alone, or on the first line
    r"|(?<!\S)([A-D])[.)](?=[\s,;:/]|$)"  # "B." / "B)" as a word further on: "B. Blue. A. Red."
    r"|\b(?i:option|choice)\s+([A-D])\b"  # Option B
)


class Grade(Record):
    """The verdict on one answer: the single letter it designates, if any, and why not."""

    letter: str | None
    correct: bool
    reason: str | None  # one of GRADE_REASONS


GRADE_REASONS = frozenset({"no_answer", "no_option", "several_options"})


def designated_letters(answer: str, presentation: Presentation) -> set[str]:
    """Every option an answer points at, by letter in any common form or by exact text.

    The answer is read as a person sees it (`clean_unicode`): "（Ｂ）" is "(B)", and invisible
    characters are ignored, while look-alikes from other scripts designate nothing.
    A lower-case letter counts only as the whole answer ("b") or in brackets ("(b)"), since
    "a" is also a word; "(B) Blue" where Blue is option A designates both A and B, which
    grades as ambiguous, and so does a second letter further on ("B. Blue. A. Red.").
    """
    keys = [normalise(option) for option in presentation.options]
    plain = _WRAPPERS.sub("", clean_unicode(answer).strip()).strip()
    text = _LEAD_IN.sub("", plain).strip()
    for whole in (normalise(plain), normalise(text)):
        if whole in keys:
            return {LETTERS[keys.index(whole)]}
    if text in ("a", "b", "c", "d"):
        return {text.upper()}
    if _LIST.fullmatch(text):
        return set(re.findall(r"[A-D]", text))
    lead = _LEADING.match(text)
    if lead and normalise(text[lead.end() :]) in keys:
        # "(B) <an option's text>": the text may hold letters of its own ("Vitamin C.").
        by_text = LETTERS[keys.index(normalise(text[lead.end() :]))]
        return {(lead.group(1) or lead.group(2)).upper(), by_text}
    trail = _TRAILING.search(text)
    if trail and normalise(text[: trail.start()]) in keys:
        # "<an option's text> (B)": the text may start like a letter ("A. Lincoln (C)").
        return {trail.group(1).upper(), LETTERS[keys.index(normalise(text[: trail.start()]))]}
    # Markers before the lead-in is removed too: it may have eaten "Option" from "Option A".
    letters = {next(g for g in m.groups() if g).upper() for source in (text, plain) for m in _MARKERS.finditer(source)}
    rest = normalise(_MARKERS.sub(" ", text))
    if rest in keys:
        letters.add(LETTERS[keys.index(rest)])
    return letters


def grade(answer: str | None, presentation: Presentation) -> Grade:
    """Correct only when exactly one option is designated and it is the gold one."""
    if answer is None or not clean_unicode(answer).strip():
        return Grade(letter=None, correct=False, reason="no_answer")
    letters = designated_letters(answer, presentation)
    if not letters:
        return Grade(letter=None, correct=False, reason="no_option")
    if len(letters) > 1:
        return Grade(letter=None, correct=False, reason="several_options")
    (letter,) = letters
    return Grade(letter=letter, correct=letter == presentation.gold_letter, reason=None)


def format_answer(letter: str, presentation: Presentation) -> str:
    """The answer written in the style the prompt asked for, so chosen and rejected texts
    never differ in format (a shortcut DPO would otherwise learn)."""
    if presentation.answer_style == "paren_letter":
        return f"({letter})"
    if presentation.answer_style == "dot_letter":
        return f"{letter}."
    return presentation.options[LETTERS.index(letter)]
