"""What every engine does the same way around its model: chat messages from a request, and
how a request's failure is described and whose fault it is (by exception type, never by
comparing messages). Images are prepared in images.py; stats are kept by the `Engine` base."""

from __future__ import annotations

from typing import Any, Literal

from .base import GenerationRequest, GenerationResult

NO_IMAGES = "model does not take images"

ErrorKind = Literal["request", "engine"]


class EngineCannotServe(ValueError):
    """This engine, as configured, cannot serve the request as asked (a model without images, a
    server without pre-fill): the engine's fault, not the request's, and final (not retried).
    Its message is the whole description."""


def describe_error(exc: BaseException) -> str:
    """One line for a failed request: the exception's type and message (the message alone for
    EngineCannotServe, which is written for the user)."""
    message = str(exc) or type(exc).__name__
    return message if isinstance(exc, EngineCannotServe) else f"{type(exc).__name__}: {message}"


def error_kind(exc: BaseException) -> ErrorKind:
    """Whose fault a request that failed before reaching the model is: the engine's when it
    cannot serve such requests, else the request's own (an unreadable image, a prompt too long)."""
    return "engine" if isinstance(exc, EngineCannotServe) else "request"


def failed(req: GenerationRequest, error: str, kind: ErrorKind, prompt_tokens: int = 0) -> GenerationResult:
    """The result of a request that failed as a whole."""
    return GenerationResult(request_id=req.request_id, prompt_tokens=prompt_tokens, error=error, error_kind=kind)


def chat_messages(
    req: GenerationRequest, image_part: dict[str, Any] | None = None, contents: list[str] | None = None
) -> list[dict[str, Any]]:
    """The request's chat as role/content dicts: `image_part` (the engine's own image content
    part) before the text of the last user message, the pre-fill as a final assistant message.
    `contents` stands in for the messages' texts, the pre-fill's last."""
    texts = contents or [m.content for m in req.messages] + ([req.prefill] if req.prefill is not None else [])
    messages: list[dict[str, Any]] = [{"role": m.role, "content": t} for m, t in zip(req.messages, texts)]
    if image_part is not None:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = [image_part, {"type": "text", "text": messages[last_user]["content"]}]
    if req.prefill is not None:
        messages.append({"role": "assistant", "content": texts[-1]})
    return messages
