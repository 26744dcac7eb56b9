"""A small, real OpenAI-compatible chat-completions server for tests, with fault injection.

It listens on 127.0.0.1 on an ephemeral port (a real socket: the `openai` SDK talks to it over
HTTP exactly as it would to `vllm serve`) and answers POST /v1/chat/completions with a
deterministic "model":

- the reply text is derived from a hash of the conversation (the messages, without a final
  assistant message that is being continued), the seed and the choice index, so a retried
  request gets the same answer as a clean one;
- with `continue_final_message: true` (vLLM / SGLang) it continues the final assistant message
  instead of answering it; the reply does not repeat the pre-fill;
- with a JSON schema (vLLM `structured_outputs.json` / `guided_json`, or OpenAI's
  `response_format`), it answers a JSON object with a value for each required property;
- with a regex (`structured_outputs.regex`, `guided_regex`, SGLang `regex`) it answers the
  fixed text in `regex_reply`;
- it counts tokens as whitespace-separated words, honours `max_tokens` (finish "length"),
  `n` (capped at `max_choices` when set, like servers that ignore `n`), `logprobs`, and
  reports `usage` (`completion_tokens_override` replaces its completion count, to test how a
  total is split over choices).

Faults follow `schedule`: one behaviour per incoming request, in arrival order, then "ok":
"ok", 429 (with `Retry-After`), 500, 503 (or any other status code), "timeout" (sleep for
`timeout_sleep_s`, longer than the client's timeout, then try to answer), "drop" (close the
connection without a response), "malformed" (200 with a broken JSON body), "echo_auth" (401
whose message repeats the Authorization header, as a careless server might). `rule(body)` can
force a behaviour for particular requests (return None to fall through to the schedule).

Scoring as vLLM does it: POST /tokenize renders a chat to token ids (every word, role marker and
image placeholder a token; `continue_final_message` leaves the final turn open), and a chat
completion that asks for `prompt_logprobs` gets one entry per prompt token after the first, each
the token's id with a log-probability derived from it (`prompt_logprobs=False` plays a server
that ignores the field).

GET /v1/models lists `served_models` (by default the names the tests' configs give it), as
`vllm serve` lists its served model names; the engine preflight reads it.

Every request body is recorded in `requests` (its path in `paths`, the Authorization header in
`auth_headers`),
and `max_in_flight` is the most requests it was handling at once.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = str | int
# The model names the tests' configs use for this server.
DEFAULT_SERVED_MODELS = ("fake", "fake-ask", "fake-vlm", "fake-reasoner", "m")


def conversation_key(messages: list[dict[str, Any]]) -> str:
    """A short hash of a conversation, as the fake model sees it."""
    blob = json.dumps(messages, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _words(messages: list[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    n += len(str(part.get("text", "")).split())
                else:
                    n += 10  # an image counts as ten tokens
    return n


class FakeOpenAIServer:
    def __init__(
        self,
        schedule: list[Behaviour] | None = None,
        *,
        rule: Callable[[dict[str, Any]], Behaviour | None] | None = None,
        delay_s: float = 0.0,
        timeout_sleep_s: float = 1.5,
        retry_after: str = "0",
        max_choices: int | None = None,
        regex_reply: str = "(B)",
        reply_words: int = 6,
        completion_tokens_override: int | None = None,
        served_models: tuple[str, ...] = DEFAULT_SERVED_MODELS,
        prompt_logprobs: bool = True,
    ) -> None:
        self.served_models = served_models
        self.prompt_logprobs = prompt_logprobs
        self.schedule: list[Behaviour] = list(schedule or [])
        self.rule = rule
        self.delay_s = delay_s
        self.timeout_sleep_s = timeout_sleep_s
        self.retry_after = retry_after
        self.max_choices = max_choices
        self.regex_reply = regex_reply
        self.reply_words = reply_words
        self.completion_tokens_override = completion_tokens_override
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.auth_headers: list[str] = []
        self.behaviours: list[Behaviour] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the "model"

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        forced = self.rule(body) if self.rule is not None else None
        with self._lock:
            if forced is not None:
                behaviour: Behaviour = forced
            else:
                behaviour = self.schedule.pop(0) if self.schedule else "ok"
            self.behaviours.append(behaviour)
        return behaviour

    def reply(
        self,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        context: list[dict[str, Any]],
        continuing: bool,
        schema: dict[str, Any] | None,
        tag: str,
    ) -> str | None:
        """A subclass's own answer for one choice (`tag` is unique per conversation, seed and
        choice); None keeps the generic replies below."""
        return None

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = list(body.get("messages") or [])
        continuing = bool(body.get("continue_final_message")) and messages and messages[-1].get("role") == "assistant"
        context = messages[:-1] if continuing else messages
        key = conversation_key(context)
        seed = body.get("seed")
        n = int(body.get("n") or 1)
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        schema = _schema_of(body)
        regex = _regex_of(body)

        choices = []
        total = 0
        for i in range(n):
            tag = f"{key}-s{seed}-i{i}"
            text = self.reply(body, messages, context, bool(continuing), schema, tag)
            if text is None and schema is not None:
                text = json.dumps(_object_for(schema, tag))
            elif text is None and regex is not None:
                text = self.regex_reply
            elif text is None:
                words = [f"w{j}-{tag}" for j in range(self.reply_words)]
                if continuing:
                    words = ["continuing", *words]
                text = " ".join(words)
            words = text.split()
            finish = "stop"
            if max_tokens is not None and len(words) > int(max_tokens):
                words = words[: int(max_tokens)]
                text = " ".join(words)
                finish = "length"
            total += len(words)
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "content": [
                        {"token": w, "logprob": -0.5 * (j + 1), "bytes": None, "top_logprobs": []}
                        for j, w in enumerate(words)
                    ]
                }
            choices.append(choice)
        prompt = _words(messages)
        if self.completion_tokens_override is not None:
            total = self.completion_tokens_override
        out: dict[str, Any] = {
            "id": f"chatcmpl-{key}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "fake"),
            "choices": choices,
        }
        if body.get("prompt_logprobs") is not None and self.prompt_logprobs:
            ids = token_ids(messages, bool(continuing), bool(body.get("add_generation_prompt", True)))
            out["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": fake_logprob(t), "rank": 1, "decoded_token": "?"}} for t in ids[1:]
            ]
            prompt = len(ids)
        out["usage"] = {"prompt_tokens": prompt, "completion_tokens": total, "total_tokens": prompt + total}
        return out

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's POST /tokenize for a chat."""
        ids = token_ids(
            list(body.get("messages") or []),
            bool(body.get("continue_final_message")),
            bool(body.get("add_generation_prompt", True)),
        )
        return {"count": len(ids), "max_model_len": 4096, "tokens": ids}


def fake_token(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


def token_ids(messages: list[dict[str, Any]], continuing: bool, add_generation_prompt: bool) -> list[int]:
    """The fake chat template: a role marker, each word (an image: ten placeholders), an end
    marker unless the final turn is continued; an open assistant turn when asked for."""
    ids: list[int] = []
    for position, m in enumerate(messages):
        ids.append(fake_token(f"<{m['role']}>"))
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        for part in parts:
            if part.get("type") == "text":
                ids += [fake_token(w) for w in str(part.get("text", "")).split()]
            else:
                ids += [fake_token("<image>")] * 10
        if not (continuing and position == len(messages) - 1):
            ids.append(fake_token("</turn>"))
    if add_generation_prompt and not continuing:
        ids.append(fake_token("<assistant>"))
    return ids


def fake_logprob(token: int) -> float:
    """The fake model's log-probability of a token wherever it stands."""
    return -0.01 - (token % 997) / 100


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    so = body.get("structured_outputs")
    if isinstance(so, dict) and so.get("json") is not None:
        js = so["json"]
        return json.loads(js) if isinstance(js, str) else js
    if body.get("guided_json") is not None:
        return body["guided_json"]
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        return rf.get("json_schema", {}).get("schema")
    return None


def _regex_of(body: dict[str, Any]) -> str | None:
    so = body.get("structured_outputs")
    if isinstance(so, dict) and so.get("regex") is not None:
        return so["regex"]
    return body.get("guided_regex") or body.get("regex")


def _object_for(schema: dict[str, Any], tag: str) -> dict[str, Any]:
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for name in schema.get("required", list(props)):
        kind = props.get(name, {}).get("type", "string")
        out[name] = {"integer": 0, "number": 0.0, "boolean": False, "array": []}.get(kind, f"{name}-{tag}")
    return out


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (killed, or timed out) is part of the tests, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/v1/models":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        data = [{"id": name, "object": "model", "owned_by": "fake"} for name in self.fake.served_models]
        self._send(200, json.dumps({"object": "list", "data": data}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, b'{"error": {"message": "bad json"}}')
            return
        with fake._lock:
            fake.requests.append(body)
            fake.paths.append(self.path.rstrip("/"))
            fake.auth_headers.append(self.headers.get("Authorization", ""))
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            answer = {"/v1/chat/completions": fake.completion, "/tokenize": fake.tokenize}.get(self.path.rstrip("/"))
            if answer is None:
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            behaviour = fake._next_behaviour(body)
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if behaviour == "ok":
                self._send(200, json.dumps(answer(body)).encode())
            elif behaviour == "timeout":
                time.sleep(fake.timeout_sleep_s)
                try:
                    self._send(200, json.dumps(answer(body)).encode())
                except OSError:
                    pass
            elif behaviour == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            elif behaviour == "malformed":
                self._send(200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind')
            elif behaviour == "echo_auth":  # a careless server that echoes the credentials
                auth = self.headers.get("Authorization", "")
                msg = json.dumps({"error": {"message": f"invalid credentials {auth}", "type": "auth"}})
                self._send(401, msg.encode())
            elif isinstance(behaviour, int):
                headers = {"Retry-After": fake.retry_after} if behaviour == 429 else None
                msg = json.dumps({"error": {"message": f"injected {behaviour}", "type": "fault", "code": behaviour}})
                self._send(behaviour, msg.encode(), headers)
            else:
                raise ValueError(f"unknown behaviour {behaviour!r}")
        finally:
            with fake._lock:
                fake.in_flight -= 1
