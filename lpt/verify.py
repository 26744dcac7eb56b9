"""Verification: parse, grade, filter and tag short and long CoTs into `Verified` rows.

Every input trace yields exactly one row, kept or dropped with a reason, so drop rates are
visible and nothing disappears silently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from lpt.config import VerifyConfig
from lpt.grade import Grade, format_answer, grade
from lpt.parse import ParsedCot, parse_continuation, parse_cot
from lpt.records import Label, LongCot, PresentedMCQ, SimpleCot, Verified

# Endings that make a listed leak word's family: inflections and the common derivations
# ("describing", "descriptions", "mentioning", "textual", "visualization"), but not arbitrary
# continuations ("texture", "statement" stay clean). A word ending in "e" drops it first.
_FAMILY_ENDINGS = (
    "s",
    "es",
    "e",
    "ed",
    "d",
    "er",
    "ers",
    "ing",
    "ings",
    "ly",
    "al",
    "ally",
    "ual",
    "ually",
    "ive",
    "ively",
    "ation",
    "ations",
)


def _family_root(word: str) -> str:
    """What every word of the family starts with: the word, less a final "e"."""
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def leak_family(word: str) -> str:
    """The regex of one leak word's family: the word, or its root before a final "e", plus at
    most one ending of `_FAMILY_ENDINGS`, as a whole word."""
    root = _family_root(word)
    endings = "|".join(sorted(map(re.escape, _FAMILY_ENDINGS), key=len, reverse=True))
    bare = "" if root != word else "?"
    return rf"(?<!\w){re.escape(root)}(?:{endings}){bare}(?!\w)"


@functools.lru_cache(maxsize=32)
def leak_pattern(leak_words: tuple[str, ...]) -> re.Pattern[str]:
    """All leak word families in one case-insensitive regex, compiled once per word list;
    group `w<i>` matches the family of `leak_words[i]`."""
    if not leak_words:
        return re.compile(r"(?!)")
    alternatives = "|".join(f"(?P<w{i}>{leak_family(w)})" for i, w in enumerate(leak_words))
    # The look-ahead on the words' first letters fails most positions on one class test
    # instead of trying every family there: the same matches, several times faster.
    first = "".join(sorted({re.escape(w[0]) for w in leak_words}))
    return re.compile(rf"(?=[{first}])(?:{alternatives})", re.IGNORECASE)


_WORD = re.compile(r"\w+")
_KNOWN_TOKENS_LIMIT = 200_000  # distinct tokens remembered per word list before starting afresh


class _LeakLookup:
    r"""What makes `find_leaks` fast. A family's match is a whole word, so when every leak word
    is one (`\w+`), its matches are exactly the text's `\w+` tokens that the pattern matches
    whole: looking up each distinct token once (`known`: token -> index of the first leak
    word whose family it is) is the same as scanning the text with the pattern, and most
    tokens recur from text to text. Before that, ASCII text holding none of the words' (ASCII)
    roots, in lower case, holds no family at all: most texts stop there."""

    def __init__(self, leak_words: tuple[str, ...]):
        self.pattern = leak_pattern(leak_words)
        roots = {_family_root(word).lower() for word in leak_words}
        self.roots = tuple(roots) if all(root.isascii() for root in roots) else None
        self.known: dict[str, int | None] | None = {} if all(_WORD.fullmatch(word) for word in leak_words) else None

    def found(self, text: str) -> set[int]:
        if self.roots is not None and text.isascii():
            lowered = text.lower()
            if not any(root in lowered for root in self.roots):
                return set()
        if self.known is None:
            return {int(m.lastgroup[1:]) for m in self.pattern.finditer(text) if m.lastgroup}
        if len(self.known) > _KNOWN_TOKENS_LIMIT:
            self.known.clear()
        found = set()
        for token in set(_WORD.findall(text)):
            if token not in self.known:
                match = self.pattern.fullmatch(token)
                self.known[token] = int(match.lastgroup[1:]) if match and match.lastgroup else None
            if self.known[token] is not None:
                found.add(self.known[token])
        return found


@functools.lru_cache(maxsize=32)
def _leak_lookup(leak_words: tuple[str, ...]) -> _LeakLookup:
    return _LeakLookup(leak_words)


def find_leaks(added_text: str, leak_words: Iterable[str]) -> list[str]:
    """Listed leak words whose family appears as a whole word (case-insensitive), in
    `leak_words` order: "Text" and "descriptions" leak, "texture" and "context" do not."""
    words = tuple(leak_words)
    found = _leak_lookup(words).found(added_text)
    return [word for i, word in enumerate(words) if i in found]


@functools.lru_cache(maxsize=32)
def _setup_pattern(setup_phrases: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in setup_phrases) or r"(?!)", re.IGNORECASE)


def find_setup_references(text: str, setup_phrases: Iterable[str]) -> list[str]:
    """Meta-commentary about the generation setup ("the user provided", "supposed to avoid
    mentioning"), as the matched text in lower case, in order of appearance."""
    return [m.group(0).lower() for m in _setup_pattern(tuple(setup_phrases)).finditer(text)]


def leak_reason(text: str, config: VerifyConfig) -> str | None:
    """`setup:<phrase>` for meta-commentary about the setup (the more specific finding), else
    `leak:<word>` for a leak word family, else None: the two are recorded apart so their rates
    can be told apart."""
    setup = find_setup_references(text, config.setup_phrases)
    if setup:
        return f"setup:{setup[0]}"
    leaks = find_leaks(text, config.leak_words)
    return f"leak:{leaks[0]}" if leaks else None


# Each pattern opens with a look-ahead on the first letters its phrases can start with: the
# same matches, but most positions fail on one class test instead of every alternative.
_BEHAVIOURS: dict[str, re.Pattern[str]] = {
    "backtracking": re.compile(
        r"(?=[waolriht])\b(?:wait|actually|on second thought|let me reconsider|reconsider(?:ing)?|"
        r"i was wrong|i made a mistake|hold on|that'?s not right|re-?evaluat\w*)\b",
        re.IGNORECASE,
    ),
    "verification": re.compile(
        r"(?=[ldvcmr])\b(?:let me (?:check|verify|confirm)|double[- ]check\w*|verif\w*|confirm\w*|"
        r"make sure|check again|re-?check\w*)\b",
        re.IGNORECASE,
    ),
    "subgoal_setting": re.compile(
        r"(?=[fntsl])(?:\b(?:first|next|then|finally),|\bstep\b|\bto answer this,? i need\b|"
        r"\blet me start by\b|\blet'?s break (?:this|it) down\b)",
        re.IGNORECASE,
    ),
    "enumeration": re.compile(
        r"(?=[(A-D]|(?i:[ocfstl]))(?:\b(?i:option|choice)\s*\(?[A-D]\)?(?!\w)|\([A-D]\)|(?<!\w)[A-D][.)](?=\s)|"
        r"\b(?i:(?:first|second|third|fourth|last) (?:option|choice))\b)"
    ),
}


class _AsciiTag:
    r"""One behaviour's pattern for ASCII text, which counts the matches of its `_BEHAVIOURS`
    pattern several times faster. Each alternative opens with a literal character (a
    `(?<!\w.)` after a first letter is the `\b` before it), so on a case-sensitive pattern the
    regex engine skips in C to the characters that can start one; and only the alternatives
    whose anchor (a text every match of it holds, in lower case) occurs in the lower-cased text
    are compiled in, which leaves few such characters. The three word tags run on the text in
    lower case, which on ASCII text is what their case-insensitive patterns see; enumeration
    runs on the text as written, since its option letters are upper case."""

    def __init__(self, lowered: bool, alternatives: tuple[tuple[str | tuple[str, ...], str], ...]):
        self.lowered = lowered
        self.alternatives = [
            (frozenset((anchor,) if isinstance(anchor, str) else anchor), regex) for anchor, regex in alternatives
        ]

    def count(self, text: str, lowered: str, present: set[str]) -> int:
        """Matches in `text` (ASCII); `present`: the anchors of all tags found in `lowered`."""
        chosen = tuple(regex for anchors, regex in self.alternatives if not anchors.isdisjoint(present))
        return len(_alternation(chosen).findall(lowered if self.lowered else text)) if chosen else 0


@functools.lru_cache(maxsize=1024)
def _alternation(alternatives: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(alternatives))


def _both_cases(anchor: str | tuple[str, ...], word: str, tail: str) -> tuple[tuple[str | tuple[str, ...], str], ...]:
    """A case-insensitive `word` that must start a word, then `tail`: two alternatives led by
    its first letter in either case (enumeration's pattern is case-sensitive)."""
    return tuple((anchor, rf"{first}(?<!\w.)(?i:{word[1:]}){tail}") for first in (word[0], word[0].upper()))


_ASCII_BEHAVIOURS: dict[str, _AsciiTag] = {
    "backtracking": _AsciiTag(
        True,
        (
            ("wait", r"w(?<!\w.)ait\b"),
            ("actually", r"a(?<!\w.)ctually\b"),
            ("on second thought", r"o(?<!\w.)n second thought\b"),
            ("let me reconsider", r"l(?<!\w.)et me reconsider\b"),
            ("reconsider", r"r(?<!\w.)econsider(?:ing)?\b"),
            ("i was wrong", r"i(?<!\w.) was wrong\b"),
            ("i made a mistake", r"i(?<!\w.) made a mistake\b"),
            ("hold on", r"h(?<!\w.)old on\b"),
            ("s not right", r"t(?<!\w.)hat'?s not right\b"),
            ("evaluat", r"r(?<!\w.)e-?evaluat\w*\b"),
        ),
    ),
    "verification": _AsciiTag(
        True,
        (
            ("let me ", r"l(?<!\w.)et me (?:check|verify|confirm)\b"),
            ("double", r"d(?<!\w.)ouble[- ]check\w*\b"),
            ("verif", r"v(?<!\w.)erif\w*\b"),
            ("confirm", r"c(?<!\w.)onfirm\w*\b"),
            ("make sure", r"m(?<!\w.)ake sure\b"),
            ("check again", r"c(?<!\w.)heck again\b"),
            ("check", r"r(?<!\w.)e-?check\w*\b"),
        ),
    ),
    "subgoal_setting": _AsciiTag(
        True,
        (
            ("first,", r"f(?<!\w.)irst,"),
            ("next,", r"n(?<!\w.)ext,"),
            ("then,", r"t(?<!\w.)hen,"),
            ("finally,", r"f(?<!\w.)inally,"),
            ("step", r"s(?<!\w.)tep\b"),
            ("i need", r"t(?<!\w.)o answer this,? i need\b"),
            ("let me start by", r"l(?<!\w.)et me start by\b"),
            ("break", r"l(?<!\w.)et'?s break (?:this|it) down\b"),
        ),
    ),
    "enumeration": _AsciiTag(
        False,
        (
            *_both_cases("option", "option", r"\s*\(?[A-D]\)?(?!\w)"),
            *_both_cases("choice", "choice", r"\s*\(?[A-D]\)?(?!\w)"),
            (("(a)", "(b)", "(c)", "(d)"), r"\([A-D]\)"),
            *(((f"{letter.lower()}.", f"{letter.lower()})"), rf"{letter}(?<!\w.)[.)](?=\s)") for letter in "ABCD"),
            *(
                pair
                for ordinal in ("first", "second", "third", "fourth", "last")
                for pair in _both_cases(
                    (f"{ordinal} option", f"{ordinal} choice"), f"{ordinal} (?:option|choice)", r"\b"
                )
            ),
        ),
    ),
}

_ANCHORS = tuple(sorted({a for tag in _ASCII_BEHAVIOURS.values() for anchors, _ in tag.alternatives for a in anchors}))


def tag_behaviours(added_text: str) -> dict[str, int]:
    """Counts of cognitive behaviours (backtracking, verification, subgoal setting,
    enumeration of options); all four keys are always present. ASCII text (nearly every
    trace) takes the fast patterns of `_ASCII_BEHAVIOURS`, other text `_BEHAVIOURS` itself."""
    if added_text.isascii():
        lowered = added_text.lower()
        present = {anchor for anchor in _ANCHORS if anchor in lowered}
        return {name: tag.count(added_text, lowered, present) for name, tag in _ASCII_BEHAVIOURS.items()}
    return {name: len(pattern.findall(added_text)) for name, pattern in _BEHAVIOURS.items()}


def render_response(think: str, answer: str) -> str:
    """The assistant turn a trained model should produce."""
    return f"<think>\n{think.strip()}\n</think>\n<answer>{answer}</answer>"


def _response_tokens(response: str) -> int:
    """A cheap, tokenizer-free length proxy: whitespace-separated words of the response."""
    return len(response.split())


def _check(finish_reason: str, parsed: ParsedCot, verdict: Grade) -> str | None:
    """The drop reason shared by short and long traces, in order of precedence."""
    if finish_reason == "length":
        return "truncated"
    if finish_reason == "error":
        return "engine_error"
    return parsed.error or verdict.reason


def verify_short(cot: SimpleCot, item: PresentedMCQ, config: VerifyConfig) -> Verified:
    """Grade one short CoT; a wrong but well-formed answer is kept with label X. A stand-in
    trace (a text model read the description) must not leak that setup either."""
    parsed = parse_cot(cot.text)
    verdict = grade(parsed.answer, item.presentation)
    think = parsed.think or ""
    reason = _check(cot.finish_reason, parsed, verdict)
    letter = verdict.letter if reason is None else None
    label = None if letter is None else Label.O if verdict.correct else Label.X
    if letter is not None and cot.stand_in:
        reason = leak_reason(think, config)
    answer = None if letter is None else format_answer(letter, item.presentation)
    response = render_response(think, answer) if answer is not None else ""
    return Verified(
        trace_id=cot.cot_id,
        kind="short",
        mcq_id=cot.mcq_id,
        image_id=cot.image_id,
        cot_id=cot.cot_id,
        long_id=None,
        label=label,
        think=think,
        answer_raw=parsed.answer,
        answer=answer,
        response=response,
        response_tokens=_response_tokens(response),
        kept=reason is None,
        drop_reason=reason,
        behaviours=tag_behaviours(think),
    )


def _join(left: str, right: str) -> str:
    """Concatenate pre-fill and continuation, adding a space only where the model wrote none
    between a cue such as "Wait," and its next word."""
    if left and right and not left[-1].isspace() and not right[0].isspace():
        return f"{left} {right}"
    return left + right


def verify_long(long: LongCot, short: Verified, item: PresentedMCQ, config: VerifyConfig) -> Verified:
    """Grade one continuation; its label pairs the short trace's label with its own. Leaks
    and behaviours are looked for only in the added text (cue and continuation, so a "Wait,"
    cue counts as one backtracking), never in the short CoT."""
    parsed = parse_continuation(long.continuation)
    verdict = grade(parsed.answer, item.presentation)
    added = _join(long.cue, parsed.think or "")
    think = (long.short_think + long.separator + added).strip()
    reason = _check(long.finish_reason, parsed, verdict)
    if reason is None and short.label is None:
        reason = "short_ungraded"
    letter = verdict.letter if reason is None else None
    label = None
    if letter is not None and short.label is not None:
        label = Label(f"{short.label.value}_{'O' if verdict.correct else 'X'}")
        reason = leak_reason(added, config)
        if reason is None and short.drop_reason and short.drop_reason.startswith(("leak:", "setup:")):
            reason = f"short_{short.drop_reason}"  # the short CoT is part of this response
    answer = None if letter is None else format_answer(letter, item.presentation)
    response = render_response(think, answer) if answer is not None else ""
    return Verified(
        trace_id=long.long_id,
        kind="long",
        mcq_id=long.mcq_id,
        image_id=long.image_id,
        cot_id=long.cot_id,
        long_id=long.long_id,
        label=label,
        think=think,
        answer_raw=parsed.answer,
        answer=answer,
        response=response,
        response_tokens=_response_tokens(response),
        kept=reason is None,
        drop_reason=reason,
        behaviours=tag_behaviours(added),
    )


def _orphan(trace: SimpleCot | LongCot, reason: str) -> Verified:
    """The row for a trace that cannot be verified at all (its MCQ or short CoT is unknown)."""
    long_id = trace.long_id if isinstance(trace, LongCot) else None
    return Verified(
        trace_id=long_id or trace.cot_id,
        kind="long" if long_id else "short",
        mcq_id=trace.mcq_id,
        image_id=trace.image_id,
        cot_id=trace.cot_id,
        long_id=long_id,
        label=None,
        think="",
        answer_raw=None,
        answer=None,
        response="",
        response_tokens=0,
        kept=False,
        drop_reason=reason,
        behaviours=tag_behaviours(""),
    )


def _drop_duplicates(rows: list[Verified]) -> list[Verified]:
    """Within one MCQ and kind, keep the first kept row (by trace id) of each exact response."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Verified] = []
    for row in rows:
        key = (row.mcq_id, row.kind, row.response)
        if row.kept and key in seen:
            row = row.model_copy(update={"kept": False, "drop_reason": "duplicate"})
        elif row.kept:
            seen.add(key)
        out.append(row)
    return out


def verify_shard(
    items: list[PresentedMCQ], shorts: list[SimpleCot], longs: list[LongCot], config: VerifyConfig
) -> list[Verified]:
    """One row per input trace: short rows first, then long rows, each sorted by trace id.
    Drop reasons beyond the per-trace ones: unknown_mcq, unknown_short, duplicate."""
    by_mcq = {item.mcq.mcq_id: item for item in items}
    short_rows = _drop_duplicates(
        [
            verify_short(cot, by_mcq[cot.mcq_id], config) if cot.mcq_id in by_mcq else _orphan(cot, "unknown_mcq")
            for cot in sorted(shorts, key=lambda c: c.cot_id)
        ]
    )
    by_short = {row.cot_id: row for row in short_rows}
    long_rows = []
    for long in sorted(longs, key=lambda c: c.long_id):
        if long.mcq_id not in by_mcq:
            long_rows.append(_orphan(long, "unknown_mcq"))
        elif long.cot_id not in by_short:
            long_rows.append(_orphan(long, "unknown_short"))
        else:
            long_rows.append(verify_long(long, by_short[long.cot_id], by_mcq[long.mcq_id], config))
    return short_rows + _drop_duplicates(long_rows)
