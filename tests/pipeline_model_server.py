"""A deterministic, pipeline-aware "model" behind the fault-injecting OpenAI-compatible server.

It answers every stage of the method well enough for the whole pipeline to yield data (MCQs,
short and long CoTs, verified rows, SFT samples and DPO pairs) in milliseconds, so the fault
matrix can compare a disturbed run with an undisturbed one row by row:

- the ask stage (a JSON schema with `questions`): as many valid MCQs as the schema pins, four
  distinct options, exactly one of which is "gold" by a hash test on its text alone
  (`is_gold`), so later stages can recognise the right option without any shared state;
- the think and think-harder stages (a continued assistant message): a short reasoning, then
  `</think>` and an answer in the style the prompt asks for, right or wrong by a hash of the
  conversation, the seed and the choice index.

Every reply depends only on the request's content, so batching, retries, reruns and server
restarts never change an answer. Faults come from `FakeOpenAIServer`'s schedule and rule.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lpt.config import PipelineConfig
from tests.fake_openai_server import FakeOpenAIServer, conversation_key

REASONING_TYPES = ("recognition", "spatial", "counting", "attribute", "text_in_scene", "causal_commonsense")
_NOUNS = ("cup", "lamp", "chair", "kite", "boat", "shell", "clock", "leaf", "stone", "brush", "bottle", "scarf")
_COLOURS = ("amber", "teal", "crimson", "ivory", "olive", "violet", "cobalt", "ochre", "slate", "coral")
_OPTION_LINE = re.compile(r"^(?:\(([ABCD])\)|([ABCD])\.) (.+)$")


def _digest(*parts: object) -> int:
    return int(hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest(), 16)


def is_gold(option: str) -> bool:
    """Whether an option text is the right answer of the question it belongs to."""
    return _digest("gold", option) % 5 == 0


def _options(tag: str) -> tuple[list[str], int]:
    """Four distinct option texts, exactly one of them gold, and the gold one's position."""
    gold: str | None = None
    wrong: list[str] = []
    j = 0
    while gold is None or len(wrong) < 3:
        h = _digest("option", tag, j)
        text = f"{_COLOURS[h % len(_COLOURS)]} {_NOUNS[(h >> 8) % len(_NOUNS)]} {100 + h % 900}"
        if is_gold(text):
            gold = gold or text
        elif text not in wrong:
            wrong.append(text)
        j += 1
    position = _digest("position", tag) % 4
    wrong = wrong[:3]
    return [*wrong[:position], gold, *wrong[position:]], position


def mcq_set(n: int, tag: str) -> dict[str, Any]:
    """A valid MCQ set of n questions for one image."""
    questions = []
    for i in range(n):
        h = _digest("question", tag, i)
        noun = _NOUNS[h % len(_NOUNS)]
        options, position = _options(f"{tag}-{i}")
        questions.append(
            {
                "question": f"Which object sits closest to the {noun} in region {i} of view {tag[:6]}?",
                "options": options,
                "answer_letter": "ABCD"[position],
                "reasoning_type": REASONING_TYPES[h % len(REASONING_TYPES)],
            }
        )
    return {"questions": questions}


def _question(messages: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    """The presented options (letter -> text) and the asked answer style, from the user turn."""
    user = next(m for m in reversed(messages) if m.get("role") == "user")
    content = user["content"]
    text = (
        content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    )
    options: dict[str, str] = {}
    for line in text.splitlines():
        match = _OPTION_LINE.match(line.strip())
        if match:
            options[match.group(1) or match.group(2)] = match.group(3)
    style = "paren" if "in parentheses" in text else "dot" if "full stop" in text else "text"
    return options, style


def reasoning_reply(messages: list[dict[str, Any]], tag: str, continuing_cue: bool) -> str:
    """A short reasoning and an answer in the asked style, right about 60% of the time."""
    options, style = _question(messages)
    letters = sorted(options)
    if len(letters) != 4:
        return "I cannot see a question with four options here.</think>\n<answer>none</answer>"
    gold = next((letter for letter in letters if is_gold(options[letter])), letters[0])
    h = _digest("think", tag)
    wrong = [letter for letter in letters if letter != gold]
    letter = gold if h % 10 < 6 else wrong[h % 3]
    answer = {"paren": f"({letter})", "dot": f"{letter}.", "text": options[letter]}[style]
    noun = _NOUNS[(h >> 4) % len(_NOUNS)]
    lead = " I look again at the" if continuing_cue else "I look at the"
    return f"{lead} {noun} near each option and compare their shapes and colours once more.</think>\n<answer>{answer}</answer>"


class PipelineModelServer(FakeOpenAIServer):
    """`FakeOpenAIServer` whose "model" answers each stage of the pipeline in its format."""

    def reply(
        self,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        context: list[dict[str, Any]],
        continuing: bool,
        schema: dict[str, Any] | None,
        tag: str,
    ) -> str | None:
        if schema is not None and "questions" in schema.get("properties", {}):
            count = int(schema["properties"]["questions"].get("minItems") or 2)
            return json.dumps(mcq_set(count, conversation_key(context)))
        if continuing:
            prefill = str(messages[-1].get("content") or "")
            return reasoning_reply(context, tag, continuing_cue=prefill.strip() != "<think>")
        return None


def pipeline_config(base: Path, server: FakeOpenAIServer, **engine: Any) -> PipelineConfig:
    """Every role on the `openai` engine kind against `server`, storage and exports under
    `base`; `engine` adds or replaces engine settings."""
    settings = {
        "kind": "openai",
        "base_url": server.base_url,
        "model": "fake",
        "server_kind": "vllm",
        "backoff_initial_s": 0.01,
        **engine,
    }
    return PipelineConfig.model_validate(
        {
            "storage": str(base / "data"),
            "exports": str(base / "exports"),
            "ask": {"questions_per_image": 2},
            "think": {"caption_stand_in": True, "sampling": {"n": 2, "max_tokens": 64}},
            "think_harder": {"sampling": {"n": 1, "max_tokens": 64}},
            "engines": {role: settings for role in ("ask", "vlm", "reasoner")},
        }
    )
