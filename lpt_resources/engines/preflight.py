"""Checks that an engine's settings can work, in seconds and before any model loads: a local
model path exists, a hub id is well formed (and cached when the hub is offline), an
OpenAI-compatible server answers `/v1/models` and serves the named model. A wrong setting then
fails a run at its start with the role, the setting and the value, not hours later inside a
model loader or after a minute of connection retries."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from lpt.config import Engines, EngineSettings, OpenAISettings, TransformersSettings, VLLMSettings

SERVER_TIMEOUT_S = 3.0
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class EngineCheckError(ValueError):
    """One engine setting that cannot work; the message names the role, setting and value."""

    def __init__(self, role: str, setting: str, value: object, problem: str) -> None:
        self.role, self.setting, self.value = role, setting, value
        super().__init__(f"engines.{role}.{setting} = {value!r}: {problem}")


def check_engine(role: str, settings: EngineSettings, timeout_s: float = SERVER_TIMEOUT_S) -> str:
    """Raise EngineCheckError when `settings` cannot serve `role`; else a short line saying what
    was found."""
    if isinstance(settings, OpenAISettings):
        return _check_server(role, settings, timeout_s)
    return _check_model(role, settings)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists() or model.count("/") > 1


def _check_model(role: str, settings: TransformersSettings | VLLMSettings) -> str:
    model = settings.model
    gguf_file = settings.gguf_file if isinstance(settings, TransformersSettings) else None
    if settings.kind == "transformers" and model == "smollm2-135m-instruct":
        from lpt_resources.engines.transformers_engine import smollm2_gguf_location

        try:
            folder, name = smollm2_gguf_location()
        except RuntimeError as error:
            raise EngineCheckError(role, "model", model, str(error)) from None
        return f"{role}: bundled {name} in {folder}"
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            raise EngineCheckError(role, "model", model, "no such local model folder (a hub id looks like org/name)")
        if gguf_file and not (folder / gguf_file).is_file():
            raise EngineCheckError(role, "gguf_file", gguf_file, f"no such file in {folder}")
        if not gguf_file and not (folder / "config.json").is_file():
            raise EngineCheckError(role, "model", model, "the folder has no config.json: not a model folder")
        return f"{role}: local model {folder}"
    if not HUB_ID.fullmatch(model) or ".." in model or "--" in model:
        raise EngineCheckError(
            role, "model", model, "neither an existing local folder nor a Hugging Face hub id (org/name)"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=settings.revision)
        if not isinstance(cached, str):
            raise EngineCheckError(
                role,
                "model",
                model,
                "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set (download it first)",
            )
        return f"{role}: hub model {model} (cached)"
    return f"{role}: hub model {model}"


def _check_server(role: str, settings: OpenAISettings, timeout_s: float) -> str:
    key = os.environ.get(settings.api_key_env)
    if settings.base_url is None:  # OpenAI's own API: no call here, but it needs a key
        if not key:
            raise EngineCheckError(role, "api_key_env", settings.api_key_env, "the environment variable is not set")
        return f"{role}: OpenAI API, key in ${settings.api_key_env}"
    url = f"{settings.base_url.rstrip('/')}/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            listing = json.loads(response.read())
    except urllib.error.HTTPError as error:
        hint = f" (is ${settings.api_key_env} right?)" if error.code in (401, 403) else ""
        raise EngineCheckError(
            role, "base_url", settings.base_url, f"GET {url} answered HTTP {error.code}{hint}"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise EngineCheckError(
            role,
            "base_url",
            settings.base_url,
            f"no OpenAI-compatible server answers GET {url} within {timeout_s:g} s ({reason})",
        ) from None
    except json.JSONDecodeError:
        raise EngineCheckError(role, "base_url", settings.base_url, f"GET {url} did not answer JSON") from None
    served = (
        [entry.get("id") for entry in listing.get("data", []) if isinstance(entry, dict)]
        if isinstance(listing, dict)
        else []
    )
    if settings.model not in served:
        raise EngineCheckError(
            role,
            "model",
            settings.model,
            f"the server at {settings.base_url} serves {', '.join(map(str, served)) or 'no models'}",
        )
    return f"{role}: {settings.model} served at {settings.base_url}"


def check_engines(engines: Engines, roles: list[str] | None = None, timeout_s: float = SERVER_TIMEOUT_S) -> list[str]:
    """Check each role's engine (the three generation roles by default; the judge's only when
    named, as it serves only where the config turns it on); the first that cannot work raises."""
    return [check_engine(role, getattr(engines, role), timeout_s) for role in roles or ["ask", "vlm", "reasoner"]]
