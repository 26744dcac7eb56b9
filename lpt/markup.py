"""Chat-template control-token text: where it may not pass from one model to the next.

vLLM and OpenAI-compatible servers render messages through the chat template and parse
special-token text in the result, so `<|im_end|><|im_start|>system` inside a description, an
MCQ or a short CoT could close the user's turn and open another. Training frameworks do the
same when they tokenize exported samples. Such text is therefore quarantined wherever it enters:
descriptions at ingest, MCQs at validation, traces at parsing.
"""

import re

# ChatML/Qwen/Llama 3 `<|…|>`, Llama 2 `[INST]` and `<<SYS>>`, `<s>`/`</s>`, Gemma's turn markers.
_CHAT_MARKUP = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>")


def chat_markup(text: str) -> list[str]:
    """The distinct control-token texts in `text`, sorted; empty when there are none."""
    return sorted(set(_CHAT_MARKUP.findall(text)))
