"""Verification of short and long CoTs: labels, normalisation, leak filter, dedup, tags."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpt.config import VerifyConfig
from lpt.records import MCQ, Label, LongCot, Presentation, PresentedMCQ, SimpleCot, Verified
from lpt.verify import (
    _BEHAVIOURS,
    find_leaks,
    find_setup_references,
    leak_pattern,
    leak_reason,
    render_response,
    tag_behaviours,
    verify_long,
    verify_shard,
    verify_short,
)
from lpt_resources.storage import to_frame

CONFIG = VerifyConfig()
MakeItem = Callable[..., PresentedMCQ]
MakeShort = Callable[..., SimpleCot]
MakeLong = Callable[..., LongCot]


@pytest.mark.parametrize(
    ("text", "leaks"),
    [
        ("The texture of the wall is rough.", []),
        ("In this context the mug is blue.", []),
        ("The Text on the sign reads STOP.", ["text"]),
        ("As the DESCRIPTION says, it is blue.", ["description", "says"]),
        ("It was described as blue; the text's font is bold.", ["described", "text"]),
        ("I visualize a pretext and subtexts, contextual cues.", ["visualize"]),
        ("Nothing to see here.", []),
    ],
)
def test_find_leaks_on_word_boundaries(text: str, leaks: list[str]) -> None:
    assert find_leaks(text, CONFIG.leak_words) == leaks


@pytest.mark.parametrize(
    ("text", "leaks"),
    [
        ("The descriptions agree on blue.", ["description"]),
        ("Without mentioning the sky, it is blue.", ["mention"]),
        ("Describing the mug: it is blue.", ["describe"]),
        ("I misread the sign at first.", ["misread"]),
        ("My mental picture is blurry; mentally I see blue.", ["mental"]),
        ("The textual cue and the texts agree.", ["text"]),
        ("A visualization helps.", ["visualize"]),
        ("The texture, the context and the statement of the state.", []),
        ("A stationary monument, a pretext and subtexts.", []),
    ],
)
def test_find_leaks_by_word_family(text: str, leaks: list[str]) -> None:
    assert find_leaks(text, CONFIG.leak_words) == leaks


def test_leak_pattern_is_compiled_once_per_word_list() -> None:
    assert leak_pattern(CONFIG.leak_words) is leak_pattern(tuple(CONFIG.leak_words))
    assert find_leaks("any text", ()) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("I'm supposed to avoid mentioning the image.", ["supposed to avoid mentioning"]),
        ("The user provided a detailed image of a mug.", ["the user provided"]),
        ("Based on the information given, it is blue.", ["based on the information given"]),
        ("I was told not to guess, so: blue.", ["i was told not to"]),
        ("The mug is blue; the user of the mug is absent.", []),
        ("The information on the sign is given in red.", []),
    ],
)
def test_find_setup_references(text: str, found: list[str]) -> None:
    assert find_setup_references(text, CONFIG.setup_phrases) == found


def _reference_thinks(stage2_rows: list[dict[str, Any]]) -> list[str]:
    """The reasoning parts of the real reference-run outputs (clean of setup talk)."""
    return [text.split("</think>")[0].removeprefix("<think>") for row in stage2_rows for text in row["outputs"]]


def test_leak_families_on_reference_outputs(stage2_rows: list[dict[str, Any]]) -> None:
    """Real traces that say "texture" and "context" stay clean; the same traces with a leak
    word's inflection, or with talk about the setup, are dropped, each reason apart."""
    thinks = _reference_thinks(stage2_rows)
    clean = [t for t in thinks if re.search(r"\btexture\b|\bcontext\b", t) and not find_leaks(t, CONFIG.leak_words)]
    assert len(clean) >= 20
    clean = [t + " The statement holds." for t in clean]
    assert [leak_reason(t, CONFIG) for t in clean] == [None] * len(clean)
    for inserted, reason in [
        ("As the descriptions say,", "leak:description"),
        ("Without mentioning it,", "leak:mention"),
        ("Describing the scene,", "leak:describe"),
        ("I misread it:", "leak:misread"),
        ("The user provided the scene:", "setup:the user provided"),
        ("Based on the information given,", "setup:based on the information given"),
    ]:
        assert {leak_reason(f"{inserted} {t}", CONFIG) for t in clean} == {reason}


def test_long_setup_reference_is_its_own_reason(
    make_item: MakeItem, make_short: MakeShort, make_long: MakeLong
) -> None:
    item = make_item()
    cot = make_short("Blue.</think><answer>B</answer>")
    short = verify_short(cot, item, CONFIG)
    long = make_long(cot, " I'm supposed to avoid mentioning the image. Blue.</think><answer>B</answer>")
    row = verify_long(long, short, item, CONFIG)
    assert (row.kept, row.drop_reason) == (False, "setup:supposed to avoid mentioning")
    stand_in = make_short("The user provided a photo. Blue.</think><answer>B</answer>", stand_in=True)
    stand_in_row = verify_short(stand_in, item, CONFIG)
    assert stand_in_row.drop_reason == "setup:the user provided"
    follow = verify_long(make_long(stand_in, " y</think><answer>B</answer>"), stand_in_row, item, CONFIG)
    assert follow.drop_reason == "short_setup:the user provided"
    from lpt_assets.summary import leak_split

    leaky = verify_long(
        make_long(cot, " the description: blue.</think><answer>B</answer>", index=2), short, item, CONFIG
    )
    assert leak_split([row, stand_in_row, follow, leaky, short]) == {"setup": 2, "short_setup": 1, "leak": 1}


def test_tag_behaviours() -> None:
    text = (
        "Wait, let me reconsider. Actually, option A is red, not (B). "
        "Let me double-check the colours: first, I look at the iris; "
        "then, I verify the hue. B. seems right."
    )
    assert tag_behaviours(text) == {
        "backtracking": 3,
        "verification": 2,
        "subgoal_setting": 2,
        "enumeration": 3,
    }
    assert tag_behaviours("") == {
        "backtracking": 0,
        "verification": 0,
        "subgoal_setting": 0,
        "enumeration": 0,
    }
    assert tag_behaviours("A red mug. Awaiting actualities.") == tag_behaviours("")


# Pieces of text around what the tags and leak families look for, in several cases, with the
# near misses and the punctuation and spacing that decide word boundaries.
_FRAGMENTS = [
    "wait",
    "Wait",
    "WAIT",
    "await",
    "waiting",
    "actually",
    "on second thought",
    "let me reconsider",
    "reconsidering",
    "i was wrong",
    "I made a mistake",
    "hold on",
    "that's not right",
    "thats not right",
    "re-evaluate",
    "reevaluating",
    "let me check",
    "Let me verify",
    "let me confirm",
    "double-check",
    "double checking",
    "verify",
    "verification",
    "confirmed",
    "make sure",
    "check again",
    "re-check",
    "rechecked",
    "first,",
    "Next,",
    "then,",
    "finally,",
    "step",
    "steps",
    "stepwise",
    "to answer this, I need",
    "to answer this i need",
    "let me start by",
    "let's break this down",
    "lets break it down",
    "option A",
    "Option (B)",
    "OPTION c",
    "optional",
    "choice D",
    "Choice(A)",
    "choices",
    "(A)",
    "(b)",
    "A.",
    "B)",
    "C.",
    "D)",
    "A.B",
    "first option",
    "Second choice",
    "THIRD option",
    "fourth choice",
    "last option",
    "the text",
    "texture",
    "context",
    "Descriptions",
    "described",
    "mentioning",
    "Mentally",
    "visualise",
    "says",
    "statement",
    "a",
    "A",
    "I",
    "i",
    "s",
    "x",
    "re",
    "(",
    ")",
    ".",
    ",",
    "-",
    "'",
    "_",
    "1",
    " ",
    "\n",
    "\u017fecond option",
    "\u0130",
    "\u212a",
    "caf\u00e9",
    "\u00e9wait",
]


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.sampled_from(_FRAGMENTS), st.sampled_from(["", " ", ",", ".", "\n"])), max_size=14))
def test_fast_paths_match_the_patterns(pieces: list[tuple[str, str]]) -> None:
    """Tags and leaks (fast paths for ASCII text, token look-ups) count what the patterns
    themselves find, on ASCII text and on text with look-alikes that case-insensitive
    matching folds ("\u017f" is "s", "\u212a" is "k")."""
    text = "".join(fragment + gap for fragment, gap in pieces)
    assert tag_behaviours(text) == {name: len(pattern.findall(text)) for name, pattern in _BEHAVIOURS.items()}
    words = CONFIG.leak_words
    found = {int(m.lastgroup[1:]) for m in leak_pattern(words).finditer(text) if m.lastgroup}
    assert find_leaks(text, words) == [word for i, word in enumerate(words) if i in found]


def test_render_response() -> None:
    assert render_response("  I see blue.\n", "(B)") == "<think>\nI see blue.\n</think>\n<answer>(B)</answer>"


# --------------------------------------------------------------------------- short


@pytest.mark.parametrize(
    ("style", "raw", "label", "answer"),
    [
        ("paren_letter", "B", Label.O, "(B)"),
        ("paren_letter", "Blue", Label.O, "(B)"),
        ("dot_letter", "(B) Blue", Label.O, "B."),
        ("option_text", "B.", Label.O, "Blue"),
        ("paren_letter", "A", Label.X, "(A)"),  # wrong answers are normalised too
        ("dot_letter", "Red", Label.X, "A."),
        ("option_text", "(C)", Label.X, "Green"),
    ],
)
def test_short_labels_and_normalises(
    make_item: MakeItem, make_short: MakeShort, style: str, raw: str, label: Label, answer: str
) -> None:
    item = make_item(answer_style=style)
    row = verify_short(make_short(f" The iris is blue.\n</think>\n<answer>{raw}</answer>"), item, CONFIG)
    assert (row.kept, row.drop_reason, row.label, row.answer, row.answer_raw) == (
        True,
        None,
        label,
        answer,
        raw,
    )
    assert row.response == f"<think>\nThe iris is blue.\n</think>\n<answer>{answer}</answer>"
    assert row.response_tokens == len(row.response.split())
    assert (row.kind, row.long_id, row.trace_id) == ("short", None, row.cot_id)


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("The iris is</think><answer>B</answer>", "length", "truncated"),
        ("The iris is", "error", "engine_error"),
        ("The iris is blue", "stop", "no_think_close"),
        ("x</think>", "stop", "no_answer"),
        ("x</think><answer>A or B</answer>", "stop", "several_options"),
        ("x</think><answer>Purple</answer>", "stop", "no_option"),
    ],
)
def test_short_drops(make_item: MakeItem, make_short: MakeShort, text: str, finish: str, reason: str) -> None:
    row = verify_short(make_short(text, finish_reason=finish), make_item(), CONFIG)
    assert (row.kept, row.drop_reason, row.label, row.answer, row.response) == (
        False,
        reason,
        None,
        None,
        "",
    )


def test_stand_in_short_is_leak_filtered(make_item: MakeItem, make_short: MakeShort) -> None:
    text = "The description says the iris is blue.</think><answer>B</answer>"
    assert verify_short(make_short(text), make_item(), CONFIG).kept
    row = verify_short(make_short(text, stand_in=True), make_item(), CONFIG)
    assert (row.kept, row.drop_reason, row.label) == (False, "leak:description", Label.O)


# --------------------------------------------------------------------------- long


def test_long_self_correction(make_item: MakeItem, make_short: MakeShort, make_long: MakeLong) -> None:
    item = make_item(answer_style="dot_letter")
    cot = make_short("The iris looks green.</think><answer>(C) Green</answer>")
    short = verify_short(cot, item, CONFIG)
    assert short.label is Label.X
    long = make_long(
        cot,
        " looking again, the iris is blue. Let me check: yes.\n</think>\n<answer>B</answer>",
    )
    row = verify_long(long, short, item, CONFIG)
    assert (row.kept, row.label, row.answer, row.kind) == (True, Label.X_O, "B.", "long")
    assert (row.trace_id, row.long_id, row.cot_id) == (long.long_id, long.long_id, cot.cot_id)
    assert row.think == "The iris looks green.\n\nWait, looking again, the iris is blue. Let me check: yes."
    assert row.response == f"<think>\n{row.think}\n</think>\n<answer>B.</answer>"
    assert row.behaviours == {
        "backtracking": 1,
        "verification": 1,
        "subgoal_setting": 0,
        "enumeration": 0,
    }


def test_long_joins_cue_without_space(make_item: MakeItem, make_short: MakeShort, make_long: MakeLong) -> None:
    cot = make_short("Green.</think><answer>B</answer>")
    short = verify_short(cot, make_item(), CONFIG)
    row = verify_long(
        make_long(cot, "it is blue.</think><answer>B</answer>", short_think="Green."),
        short,
        make_item(),
        CONFIG,
    )
    assert row.label is Label.O_O
    assert row.think == "Green.\n\nWait, it is blue."


@pytest.mark.parametrize(
    ("short_answer", "long_answer", "label"),
    [("B", "B", Label.O_O), ("B", "A", Label.O_X), ("A", "B", Label.X_O), ("A", "Red", Label.X_X)],
)
def test_long_labels(
    make_item: MakeItem,
    make_short: MakeShort,
    make_long: MakeLong,
    short_answer: str,
    long_answer: str,
    label: Label,
) -> None:
    cot = make_short(f"x</think><answer>{short_answer}</answer>")
    short = verify_short(cot, make_item(), CONFIG)
    row = verify_long(make_long(cot, f" y</think><answer>{long_answer}</answer>"), short, make_item(), CONFIG)
    assert (row.kept, row.label) == (True, label)


def test_long_leak_only_in_added_text(make_item: MakeItem, make_short: MakeShort, make_long: MakeLong) -> None:
    cot = make_short("The text on the cap is blue.</think><answer>B</answer>")
    short = verify_short(cot, make_item(), CONFIG)
    clean = make_long(
        cot,
        " the texture is blue too.</think><answer>B</answer>",
        short_think="The text on the cap is blue.",
    )
    assert verify_long(clean, short, make_item(), CONFIG).kept
    leaky = make_long(cot, " as the description mentions, blue.</think><answer>B</answer>", index=1)
    row = verify_long(leaky, short, make_item(), CONFIG)
    assert (row.kept, row.drop_reason, row.label) == (False, "leak:description", Label.O_O)


def test_long_drops(make_item: MakeItem, make_short: MakeShort, make_long: MakeLong) -> None:
    item = make_item()
    cot = make_short("x</think><answer>B</answer>")
    short = verify_short(cot, item, CONFIG)
    truncated = make_long(cot, " still going", finish_reason="length")
    assert verify_long(truncated, short, item, CONFIG).drop_reason == "truncated"
    ungraded = verify_short(make_short("x</think><answer>Purple</answer>", index=1), item, CONFIG)
    row = verify_long(make_long(cot, " y</think><answer>B</answer>"), ungraded, item, CONFIG)
    assert (row.kept, row.drop_reason, row.label) == (False, "short_ungraded", None)
    leaky_cot = make_short("The description says blue.</think><answer>B</answer>", index=2, stand_in=True)
    leaky_short = verify_short(leaky_cot, item, CONFIG)
    row = verify_long(make_long(leaky_cot, " y</think><answer>B</answer>"), leaky_short, item, CONFIG)
    assert row.drop_reason == "short_leak:description"


# --------------------------------------------------------------------------- shard


def test_shard_one_row_per_trace_dedup_and_unknowns(
    make_item: MakeItem, make_short: MakeShort, make_long: MakeLong
) -> None:
    item = make_item()
    shorts = [
        make_short("Blue.</think><answer>B</answer>", index=0),
        make_short("Blue.</think><answer>(B)</answer>", index=1),  # same normalised response
        make_short("Green.</think><answer>C</answer>", index=2),
        make_short("Blue.</think><answer>B</answer>", mcq_id="unknown", index=3),
    ]
    longs = [
        make_long(shorts[2], " no, blue.</think><answer>B</answer>", short_think="Green.", index=0),
        make_long(shorts[2], " no, blue.</think><answer>Blue</answer>", short_think="Green.", index=1),
        make_long(shorts[2], " truly green.</think><answer>C</answer>", short_think="Green.", index=2),
        make_long(shorts[3], " blue.</think><answer>B</answer>", index=0),
        make_long(shorts[0], " blue.</think><answer>B</answer>", index=0).model_copy(update={"cot_id": "ghost"}),
    ]
    rows = verify_shard([item], shorts, longs, CONFIG)
    assert len(rows) == len(shorts) + len(longs)
    assert sorted(r.trace_id for r in rows) == sorted([s.cot_id for s in shorts] + [long.long_id for long in longs])
    reasons = Counter(r.drop_reason for r in rows)
    assert reasons == Counter({None: 4, "duplicate": 2, "unknown_mcq": 2, "unknown_short": 1})
    duplicates = sorted(
        (r for r in rows if r.kind == "short" and r.response.endswith("<answer>(B)</answer>")),
        key=lambda r: r.trace_id,
    )
    assert [r.drop_reason for r in duplicates] == [None, "duplicate"]
    assert Counter(r.label for r in rows if r.kept) == Counter({Label.O: 1, Label.X: 1, Label.X_O: 1, Label.X_X: 1})
    assert verify_shard([item], shorts[::-1], longs[::-1], CONFIG) == rows


def test_shard_over_real_outputs(
    reference_items: list[tuple[dict[str, Any], Presentation]], make_short: MakeShort
) -> None:
    items: list[PresentedMCQ] = []
    shorts: list[SimpleCot] = []
    for row, presentation in reference_items:
        mcq = MCQ(
            mcq_id=row["mcq_id"],
            image_id=row["image_id"],
            question=row["question"],
            options=presentation.options,
            answer=row["gold_answer_text"],
            reasoning_type=row["reasoning_type"],
        )
        items.append(PresentedMCQ(mcq=mcq, presentation=presentation))
        shorts += [
            make_short(text.removeprefix("<think>"), mcq_id=row["mcq_id"], index=i)
            for i, text in enumerate(row["outputs"])
        ]
    rows = verify_shard(items, shorts, [], CONFIG)
    assert len(rows) == 400
    labels = Counter(r.label for r in rows)
    assert labels[Label.O] == 234
    assert all(r.answer is not None and r.response.endswith(f"<answer>{r.answer}</answer>") for r in rows if r.kept)
    styles = {item.mcq.mcq_id: item.presentation.answer_style for item in items}
    for r in rows:
        if r.kept and styles[r.mcq_id] == "paren_letter":
            assert r.answer in {"(A)", "(B)", "(C)", "(D)"}


# --------------------------------------------------------------------------- bad shapes


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("The iris is blue.</think><answer>B</answer>", "length", "truncated"),  # cut, complete
        ("The iris is blue and", "length", "truncated"),
        ("", "stop", "empty"),
        ("\u200b\ufeff", "stop", "empty"),
        ("The answer is (B).", "stop", "no_think_close"),  # no tags at all
        ("Blue.</think><answer>(B)", "stop", "unclosed_answer"),
        ("Blue.</think><answer>B</answer><answer>A</answer>", "stop", "multiple_answers"),
        ("Blue <answer>B</answer>.</think><answer>B</answer>", "stop", "tag_in_think"),
        ("Blue.</think><answer>(A) or (B)</answer>", "stop", "several_options"),
        ("Blue.</think><answer>B. A.</answer>", "stop", "several_options"),
        ("Blue.</think><answer>(\u0412)</answer>", "stop", "no_option"),  # Cyrillic Ve
        ("Blue.</think><answer>\u200b</answer>", "stop", "empty_answer"),
        ("Blue\ud800.</think><answer>B</answer>", "stop", "invalid_unicode"),
    ],
)
def test_shard_bad_shapes(make_item: MakeItem, make_short: MakeShort, text: str, finish: str, reason: str) -> None:
    # Ids hash the text in these factories: give odd texts a clean one's id.
    short = make_short("placeholder", finish_reason=finish).model_copy(update={"text": text})
    (row,) = verify_shard([make_item()], [short], [], CONFIG)
    assert (row.kept, row.drop_reason, row.label, row.answer, row.response) == (
        False,
        reason,
        None,
        None,
        "",
    )


@pytest.mark.parametrize(
    ("raw", "answer"),
    [("（Ｂ）", "(B)"), ("Ｂｌｕｅ", "(B)"), ("\u200fB\u200e", "(B)"), ("B\x00", "(B)")],
)
def test_shard_reads_unicode_answers_and_normalises_them(
    make_item: MakeItem, make_short: MakeShort, raw: str, answer: str
) -> None:
    text = f"The iris is blue 😀.\r\n</think>\r\n<answer>{raw}</answer>\r\n"
    (row,) = verify_shard([make_item()], [make_short(text)], [], CONFIG)
    assert (row.kept, row.label, row.answer_raw, row.answer) == (True, Label.O, raw, answer)
    assert row.response == "<think>\nThe iris is blue 😀.\n</think>\n<answer>(B)</answer>"


def test_shard_very_long_trace(make_item: MakeItem, make_short: MakeShort) -> None:
    body = "I look at the iris again. " * 4_000  # about 100k characters
    short = make_short(body + "</think><answer>B</answer>")
    (row,) = verify_shard([make_item()], [short], [], CONFIG)
    assert (row.kept, row.label, row.response_tokens) == (True, Label.O, 6 * 4_000 + 3)


@pytest.mark.parametrize(
    ("continuation", "finish", "reason"),
    [
        (" so it is blue.</think><answer>B</answer>", "length", "truncated"),
        (" so it is", "stop", "no_think_close"),
        (" blue.</think><answer>B</answer><answer>C</answer>", "stop", "multiple_answers"),
        (" blue <answer>C</answer>.</think><answer>B</answer>", "stop", "tag_in_think"),
        (" blue.</think><answer>B or C</answer>", "stop", "several_options"),
        ("\ud83d blue.</think><answer>B</answer>", "stop", "invalid_unicode"),
    ],
)
def test_shard_long_bad_shapes(
    make_item: MakeItem,
    make_short: MakeShort,
    make_long: MakeLong,
    continuation: str,
    finish: str,
    reason: str,
) -> None:
    cot = make_short("Green.</think><answer>C</answer>")
    long = make_long(cot, "placeholder", short_think="Green.", finish_reason=finish)
    long = long.model_copy(update={"continuation": continuation})
    short_row, long_row = verify_shard([make_item()], [cot], [long], CONFIG)
    assert short_row.kept and short_row.label is Label.X
    assert (long_row.kept, long_row.drop_reason, long_row.label) == (False, reason, None)


def test_every_row_can_be_written(
    tmp_path: Any, make_item: MakeItem, make_short: MakeShort, make_long: MakeLong
) -> None:
    """Rows from odd outputs (lone surrogates, NUL, RTL marks, emoji) go to real Parquet."""
    texts = [
        "x\ud800</think><answer>B</answer>",
        "x\x00\u202e😀</think><answer>\u200bB</answer>",
        "\udfff",
        "x</think><answer>\ud800</answer>",
    ]
    shorts = [make_short(str(i), index=i).model_copy(update={"text": text}) for i, text in enumerate(texts)]
    longs = [make_long(shorts[1], "y").model_copy(update={"continuation": " y\ud800</think><answer>B</answer>"})]
    rows = verify_shard([make_item()], shorts, longs, CONFIG)
    path = tmp_path / "verified.parquet"
    to_frame(rows, Verified).write_parquet(path)
    assert pl.read_parquet(path)["drop_reason"].to_list() == [r.drop_reason for r in rows]
    assert sorted(str(r.drop_reason) for r in rows) == sorted(
        ["invalid_unicode", "None", "invalid_unicode", "invalid_unicode", "invalid_unicode"]
    )
