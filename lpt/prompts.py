"""Prompt building for the three generation stages, and the seeded MCQ presentation.

All wording here is ours. Every random choice comes from an RNG seeded by the row's id,
so a rerun builds byte-identical prompts (which is what makes the response cache work).
"""

from __future__ import annotations

import hashlib
import random

from lpt.config import AskConfig, ThinkHarderConfig
from lpt.records import LETTERS, MCQ, Caption, Presentation, PresentedMCQ, Record, SimpleCot

ANSWER_INSTRUCTIONS = {
    "paren_letter": "Give the letter of your choice in parentheses, like (X), inside the answer tags.",
    "dot_letter": "Give the letter of your choice followed by a full stop, like X., inside the answer tags.",
    "option_text": "Give the full text of the option you choose, exactly as written, inside the answer tags.",
}

# The same requests for a target without tags (LaCoT's reason / answer turns carry none).
PLAIN_ANSWER_INSTRUCTIONS = {
    "paren_letter": "Give the letter of your choice in parentheses, like (X).",
    "dot_letter": "Give the letter of your choice followed by a full stop, like X.",
    "option_text": "Give the full text of the option you choose, exactly as written.",
}

VLM_SYSTEM = (
    "You answer questions about images. Before answering, reason step by step about what you "
    "see inside <think> </think> tags. Then write only your final answer inside "
    "<answer> </answer> tags."
)

STAND_IN_PREAMBLE = "[Caption stand-in: you are given a written account of the image in place of the image.]\n"


class ChatPrompt(Record):
    """A single chat prompt, ready to become an engine request."""

    key: str  # the id of the row it belongs to (mcq_id, cot_id, image_id)
    system: str
    user: str
    prefill: str | None = None
    image_path: str | None = None


def seeded_rng(*parts: object) -> random.Random:
    """An RNG that depends only on the given parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def present(mcq: MCQ) -> PresentedMCQ:
    """Shuffle and re-letter the options, and pick the option and answer styles."""
    rng = seeded_rng("present", mcq.mcq_id)
    options = list(mcq.options)
    rng.shuffle(options)
    presentation = Presentation(
        option_style=rng.choice(["paren", "dot"]),
        answer_style=rng.choice(["paren_letter", "dot_letter", "option_text"]),
        options=options,
        gold_letter=LETTERS[options.index(mcq.answer)],
    )
    return PresentedMCQ(mcq=mcq, presentation=presentation)


def render_question(item: PresentedMCQ) -> str:
    """The question block exactly as both the VLM and the reasoner see it."""
    p = item.presentation
    lines = [item.mcq.question, ""]
    for letter, text in zip(LETTERS, p.options, strict=True):
        lines.append(f"({letter}) {text}" if p.option_style == "paren" else f"{letter}. {text}")
    lines += ["", ANSWER_INSTRUCTIONS[p.answer_style]]
    return "\n".join(lines)


# ---- Stage 1: ask --------------------------------------------------------------------------

ASK_SYSTEM = "You write multiple-choice questions that test whether a model really looked at a photo."


def ask_prompt(caption: Caption, config: AskConfig) -> ChatPrompt:
    n = config.questions_per_image
    rules = (
        f"Here is a detailed account of a photo. Write {n} multiple-choice questions about it. "
        "Each question must need a close look at the photo to answer: fine textures, small "
        "objects, how many of something there are, where things are relative to each other, "
        "writing visible in the scene, colours, light and shadow. Each question has four "
        "different options and exactly one correct option. The question must not give the "
        "answer away, and no two questions may ask the same thing. Never mention the account, "
        "a caption or any text you were given: ask about the photo itself."
    )
    if config.structured_output:
        form = (
            "Reply with JSON: an object with a `questions` list; each item has `question`, "
            "`options` (four strings, no letters), `answer_letter` (A, B, C or D: the correct "
            "option's position) and `reasoning_type`."
        )
    else:
        form = (
            "Write one question per line, numbered, in this form:\n"
            "1. <question> … </question> <choices> (A) … (B) … (C) … (D) … </choices> "
            "<answer> the correct option's text </answer> <type> the kind of reasoning </type>"
        )
    user = f"{rules}\n\n{form}\n\nThe photo:\n{caption.description}"
    return ChatPrompt(key=caption.image_id, system=ASK_SYSTEM, user=user)


# ---- Stage 2: think --------------------------------------------------------------------------


def think_prompt(item: PresentedMCQ, caption: Caption, *, stand_in: bool) -> ChatPrompt:
    """The VLM prompt; with `stand_in` a text model reads the description in place of the image."""
    user = render_question(item)
    if stand_in:
        user = f"{STAND_IN_PREAMBLE}{caption.description}\n\n{user}"
    return ChatPrompt(
        key=item.mcq.mcq_id,
        system=VLM_SYSTEM,
        user=user,
        prefill="<think>",
        image_path=None if stand_in else caption.image_path,
    )


# ---- Stage 3: think harder -------------------------------------------------------------------

REASONER_INSTRUCTION = (
    "Picture the scene below as if you were looking at the photo yourself, and answer the "
    "question about it. Reason it through carefully. In your reasoning, speak only of what you "
    "see in the photo: never refer to a written account, a description, or any text you were "
    "given. Finish with your final answer inside <answer> </answer> tags."
)


def think_harder_prompt(item: PresentedMCQ, caption: Caption, short_think: str, cue: str, separator: str) -> ChatPrompt:
    """The reasoner's prompt: pre-filled with a restatement, the VLM's short CoT and a cue."""
    user = f"{REASONER_INSTRUCTION}\n\nThe scene:\n{caption.description}\n\n{render_question(item)}"
    restatement = "I need to look at the photo and answer this question."
    prefill = f"<think>\n{restatement} {short_think}{separator}{cue}"
    return ChatPrompt(key=item.mcq.mcq_id, system="", user=user, prefill=prefill)


def _regex_literal(text: str) -> str:
    return "".join("\\" + ch if ch in r"\.^$*+?()[]{}|/-" else ch for ch in text)


def answer_regex(presentation: Presentation) -> str:
    """The answer in the style the prompt asked for: any option, so correctness stays the model's."""
    if presentation.answer_style == "paren_letter":
        return r"\([ABCD]\)"
    if presentation.answer_style == "dot_letter":
        return r"[ABCD]\."
    return "(" + "|".join(_regex_literal(option) for option in presentation.options) + ")"


def think_answer_regex(max_tokens: int, presentation: Presentation) -> str:
    """The output shape after a "<think>" pre-fill, for engines with regex-constrained decoding
    (for models too weak to keep the format on their own). The reasoning is capped below the
    token budget (two characters a token leaves room for the short tokens small models like)
    so the model has to close it and answer rather than run out of tokens mid-thought."""
    think_chars = max(40, 2 * max_tokens - 40)
    return rf"[^<]{{20,{think_chars}}}</think>\n<answer>{answer_regex(presentation)}</answer>"


def ensure_full_stop(text: str) -> str:
    """Close the short CoT with a full stop so the cue starts a new sentence; keep its casing."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def choose_cue(cot: SimpleCot, sample_index: int, config: ThinkHarderConfig) -> tuple[str, str]:
    """The cue and separator for one continuation, seeded by the short CoT and sample index."""
    rng = seeded_rng("cue", cot.cot_id, sample_index)
    cue = rng.choices(config.cues, weights=config.cue_weights, k=1)[0]
    return cue, rng.choice(config.separators)
