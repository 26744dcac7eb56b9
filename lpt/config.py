"""One versioned config per stage; its fingerprint is both the prompt's and the asset's version."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from lpt.records import PairType


class StageConfig(BaseModel):
    """Bump `version` when the prompt wording changes; any field change changes the fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str = "1"

    def fingerprint(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Sampling(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 1024
    seed: int = 0


class AskConfig(StageConfig):
    """Stage 1: MCQs from a dense description."""

    questions_per_image: int = 8
    structured_output: bool = True  # JSON schema + guided decoding; tagged text otherwise
    min_question_similarity_to_drop: float = 0.9  # near-duplicate threshold (token Jaccard)
    sampling: Sampling = Sampling(n=1, temperature=0.7, top_p=0.95, max_tokens=2048)


class ThinkConfig(StageConfig):
    """Stage 2: short CoTs from the VLM (reference: n=10, T=0.7, top_p=0.8, rep 1.05, 1024)."""

    image_max_side: int = 512
    caption_stand_in: bool = False  # a text model reads the description instead of the image
    constrain_format: bool = False  # force "…</think>\n<answer>…</answer>" (for weak models)
    ban_leak_words_in_stand_in: bool = True  # a text model reading the description must not cite it
    sampling: Sampling = Sampling(n=10, temperature=0.7, top_p=0.8, repetition_penalty=1.05, max_tokens=1024)


class ThinkHarderConfig(StageConfig):
    """Stage 3: the reasoner continues a short CoT after a cognitive cue."""

    cues: tuple[str, ...] = ("Wait,", "Hmm,", "Alternatively,")
    cue_weights: tuple[float, ...] = (0.6, 0.2, 0.2)
    separators: tuple[str, ...] = ("\n\n", " ")
    expand_labels: tuple[Literal["O", "X"], ...] = ("O", "X")
    # With [scoring] on, k > 0 expands only the k short CoTs with the best LaCoT reward per MCQ
    # and label (0: all): ranking O and X apart keeps the wrong shorts that self-corrections
    # (X_O, about half of SFT) grow from, which a joint ranking by gold likelihood would starve.
    expand_top_k_by_reward: int = Field(default=0, ge=0)
    retry_max_tokens: int = 4096  # one retry for continuations cut by the token limit
    constrain_format: bool = False  # force "…</think>\n<answer>…</answer>" (for weak models)
    ban_leak_words: bool = True  # the reasoner cannot write the verify stage's leak words at all
    sampling: Sampling = Sampling(n=3, temperature=0.7, top_p=0.8, top_k=50, max_tokens=2048)


class VerifyConfig(StageConfig):
    leak_words: tuple[str, ...] = (
        "description",
        "described",
        "describes",
        "describe",
        "mention",
        "mentioned",
        "mentions",
        "text",
        "stated",
        "states",
        "says",
        "visualize",
        "visualise",
        "visualizing",
        "caption",
        "misread",
        "mental",
    )  # each stands for its word family: "mentioning", "descriptions" (lpt/verify.py)
    # Regexes (case-insensitive) for meta-commentary about the setup that no single word gives
    # away; a kept trace must not talk about what it was given or told.
    setup_phrases: tuple[str, ...] = (
        r"\bsupposed to (?:avoid|not) (?:mention|refer|cit|talk)\w*",
        r"\bthe user (?:has )?(?:provided|gave|given|supplied|shared|asked|wants|said)\b",
        r"\b(?:based on|according to|from) the (?:information|details|data) (?:given|provided|supplied)\b",
        r"\bthe (?:given|provided) (?:information|details)\b",
        r"\bI(?:'m| am| was) (?:told|instructed) (?:not )?to\b",
        r"\b(?:my|the) instructions (?:say|tell|ask)\b",
        r"\bwithout (?:mentioning|referring to|citing) the (?:image|picture|information|details)\b",
    )


class ScoringConfig(StageConfig):
    """LaCoT's rationale scoring (lpt/scoring.py): the VLM scores each short CoT with every
    option, teacher-forced; MCQs whose Best-of-N answer beats the gold one by more than
    `suspect_margin` (mean log-probability per token) are suspect keys. Off unless asked for:
    it needs a vlm engine that can score (transformers, vllm, or an OpenAI-compatible vLLM
    server: kind = openai with server_kind = vllm)."""

    enabled: bool = False
    suspect_margin: float = 0.1


JudgeFinding = Literal["judge_inconsistent", "judge_setup_reference", "judge_no_verdict"]


class JudgeConfig(StageConfig):
    """The optional LLM judge (lpt/judge.py): the `judge` engine reads each kept long CoT and
    says whether its added reflection leads to its final answer and whether it talks about its
    setup. Findings listed in `drop` take the trace out of SFT and DPO with that reason; the
    others are only recorded (flagged). `judge_no_verdict`: the judge's reply was unusable."""

    enabled: bool = False
    drop: tuple[JudgeFinding, ...] = ("judge_inconsistent", "judge_setup_reference")
    structured_output: bool = True  # JSON schema + guided decoding; the prompt asks for JSON either way
    sampling: Sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_tokens=384)


class SelectConfig(StageConfig):
    """SFT selection and DPO mining."""

    sft_per_mcq: int = 4
    self_correction_share: float = 0.5  # about half of the SFT traces are X_O where available
    max_pairs_per_type_per_mcq: int = 2
    seed: int = 0
    # With [scoring] on (lpt/scoring.py): leave out MCQs whose key the VLM's own rationales
    # dispute (suspect keys), and pick SFT traces by their short CoT's LaCoT reward, best
    # first, instead of the length-weighted draw.
    hold_out_suspect_keys: bool = False
    rank_by_reward: bool = False


class OutputIdentity(BaseModel):
    """What decides an engine's answers (not where it is served nor how fast): the response
    cache's identity and, through the code versions, when stages are stale. Settings and
    resources of every kind derive it here alone; a kind without a field keeps its default, so
    the identities (and the cache keys and code versions made from them) stay what they were
    when every kind had every field."""

    model_config = ConfigDict(frozen=True)
    kind: str
    model: str
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    engine_kwargs: dict[str, Any] = {}

    @classmethod
    def of(cls, engine: object) -> OutputIdentity:
        """The identity of engine settings or an engine resource (any kind)."""
        return cls.model_validate({name: getattr(engine, name) for name in cls.model_fields if hasattr(engine, name)})


class EngineSettingsBase(BaseModel):
    """Settings every engine kind takes: the model and how results stream to the cache."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str
    model: str = "smollm2-135m-instruct"  # HF id, local path, the bundled GGUF alias, or a served name
    revision: str | None = None  # a hub repository's branch, tag or commit
    # Streaming: results reach the response cache in groups of `flush_every`, or after
    # `flush_seconds`, whichever comes first (a crash loses at most those and what is in flight);
    # `queue_depth` requests are kept in flight (None: twice vLLM's max_num_seqs, twice
    # max_concurrency); progress is logged every `progress_seconds`.
    flush_every: int = Field(default=64, ge=1)
    flush_seconds: float = Field(default=10.0, gt=0)
    queue_depth: int | None = Field(default=None, ge=1)
    progress_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _other_kinds_keys_ignored(cls, data: Any) -> Any:
        """A table keeps loading when its kind changes (`LPT_REASONER_KIND=openai` over a file
        written for transformers): keys of other kinds are ignored, as the engine always
        ignored them; a key of no kind is still refused."""
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key in cls.model_fields or key not in ENGINE_FIELDS}
        return data

    def output_identity(self) -> str:
        """The settings that change what the model writes: for code versions."""
        return OutputIdentity.of(self).model_dump_json()


class TransformersSettings(EngineSettingsBase):
    """An embedded transformers model (the CPU default)."""

    kind: Literal["transformers"] = "transformers"
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 16


class VLLMSettings(EngineSettingsBase):
    """An in-process `vllm.LLM` (None: vLLM's own default); see lpt_resources/engines/vllm_engine.py."""

    kind: Literal["vllm"] = "vllm"
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1  # replicas, one process each
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # False: CUDA graphs on
    seed: int | None = 0
    limit_mm_per_prompt: dict[str, int] | None = None  # e.g. {image = 1} for a VLM
    engine_kwargs: dict[str, Any] = {}  # anything else vllm.LLM takes


class OpenAISettings(EngineSettingsBase):
    """Any OpenAI-compatible server; the key is read from `api_key_env` at call time."""

    kind: Literal["openai"] = "openai"
    base_url: str | None = None
    server_kind: Literal["vllm", "openai", "sglang", "llamacpp"] = "vllm"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 6  # per HTTP call, on 429/5xx/timeouts/dropped connections
    backoff_initial_s: float = 1.0  # doubling back-off between those retries
    supports_images: bool = False
    price_input_per_million: float | None = None
    price_output_per_million: float | None = None


ENGINE_SETTINGS: dict[str, type[EngineSettingsBase]] = {
    "transformers": TransformersSettings,
    "openai": OpenAISettings,
    "vllm": VLLMSettings,
}
# Every key an engine table takes, of any kind (environment overrides, "did you mean" hints).
ENGINE_FIELDS = {name: info for settings in ENGINE_SETTINGS.values() for name, info in settings.model_fields.items()}


def _kind_of(data: Any) -> str:
    """The union's tag: `kind`, "transformers" where a table names none."""
    return data.get("kind", "transformers") if isinstance(data, dict) else getattr(data, "kind", "transformers")


# Which engine serves a role: `kind` selects the settings class, with that kind's own fields.
EngineSettings = Annotated[
    Annotated[TransformersSettings, Tag("transformers")]
    | Annotated[OpenAISettings, Tag("openai")]
    | Annotated[VLLMSettings, Tag("vllm")],
    Discriminator(_kind_of),
]
_ENGINE_SETTINGS_ADAPTER: TypeAdapter[EngineSettingsBase] = TypeAdapter(EngineSettings)


def engine_settings(**fields: Any) -> EngineSettingsBase:
    """Engine settings from keyword arguments, the class chosen by `kind` (as a config table)."""
    return _ENGINE_SETTINGS_ADAPTER.validate_python(fields)


class Engines(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ask: EngineSettings = TransformersSettings()
    vlm: EngineSettings = TransformersSettings()
    reasoner: EngineSettings = TransformersSettings()
    judge: EngineSettings = TransformersSettings()  # unset: the reasoner's settings

    @model_validator(mode="before")
    @classmethod
    def _judge_is_the_reasoner(cls, data: Any) -> Any:
        """Without its own table the judge is the reasoner: same settings, so the loaded
        reasoner is parked for the judge and serves it (one model, one load)."""
        if isinstance(data, dict) and "judge" not in data:
            data = {**data, "judge": data.get("reasoner", {})}
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_the_key(cls, data: Any, handler: Any) -> Any:
        """Errors located as the user wrote the table: `engines.vlm.kind = 'vlllm'` for an
        unknown kind, and no union tag inside the key (`engines.ask.modle`, not
        `engines.ask.transformers.modle`)."""
        try:
            return handler(data)
        except ValidationError as error:
            raise ValidationError.from_exception_data(error.title, [_untagged(e) for e in error.errors()]) from None


def _untagged(problem: Any) -> Any:
    location = tuple(problem["loc"])
    if problem["type"] == "union_tag_invalid":
        *others, last = (repr(kind) for kind in ENGINE_SETTINGS)
        expected = f"{', '.join(others)} or {last}"
        return {
            "type": "literal_error",
            "loc": (*location, "kind"),
            "input": problem["ctx"]["tag"],
            "ctx": {"expected": expected},
        }
    if len(location) > 1 and location[1] in ENGINE_SETTINGS:
        location = (location[0], *location[2:])
    return {key: value for key, value in {**problem, "loc": location}.items() if key in ("type", "loc", "input", "ctx")}


class AutomationConfig(BaseModel):
    """The sensor that registers caption files dropped into watched folders and runs their
    shards, and the schedule that backfills shards whose final assets are missing or stale."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sensor_enabled: bool = True  # running by default in `dagster dev`
    schedule_enabled: bool = True
    watch: tuple[str, ...] = ("incoming",)  # local folders, relative to the config file
    # manifests (rows with image + description); a sub-folder holding DOCCI's
    # docci_descriptions.jsonlines (and images/) counts as one DOCCI drop
    patterns: tuple[str, ...] = ("*.jsonl", "*.jsonlines", "*.parquet")
    docci_splits: tuple[str, ...] = ("train",)
    settle_seconds: float = 30.0  # a file untouched this long is complete, not still being written
    shard_size: int = 64
    sensor_interval_s: int = 60
    backfill_cron: str = "0 2 * * *"
    max_shards_per_run: int = 16  # one engine load serves up to this many shards
    exports_sensor_enabled: bool = True  # exports follow every run that finishes shards


class ChecksConfig(BaseModel):
    """Thresholds of the blocking quality checks (lpt/quality.py). The defaults catch broken
    stages (a prompt the model ignores, a token limit that cuts everything, a grader that marks
    all wrong) without failing a weak demo model; configs/paper.toml has stricter values."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    min_rows: int = 20  # fewer rows than this: a rate is noise, the check passes with a note
    min_mcq_validity: float = 0.2  # valid MCQs / MCQs proposed (refused ones included)
    min_parse_rate: float = 0.5  # gradable short CoTs / short CoTs that finished
    max_truncation_rate_short: float = 0.5
    max_truncation_rate_long: float = 0.5  # after the stage's one retry with a larger budget
    max_leak_rate: float = 0.5  # graded traces dropped for leaking the setup
    short_accuracy: tuple[float, float] = (0.02, 0.98)  # 4 options: chance is 0.25
    long_accuracy: tuple[float, float] = (0.02, 0.98)
    max_pair_type_share: float = 0.95  # no DPO pair type above this share of a shard's pairs
    min_mcqs_for_pairs: int = 20  # a shard with this many MCQs and no pairs fails

    @model_validator(mode="after")
    def _bands_ordered(self) -> ChecksConfig:
        for name in ("short_accuracy", "long_accuracy"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"checks.{name} = [{low}, {high}]: the lower bound is above the upper one")
        return self


class ExportConfig(StageConfig):
    """What the exports hold and how they name images. A change re-exports every finished shard
    once (the export notices the new fingerprint); otherwise each run exports only the shards
    that changed."""

    license: str = "other"  # the HF card's `license` (e.g. cc-by-4.0 for DOCCI-based data)
    pretty_name: str = "LongPerceptualThoughts-style long chain-of-thought data"
    name_prefix: str = "lpt"  # dataset names in LLaMA-Factory's dataset_info.json
    pair_types: tuple[str, ...] | None = None  # DPO pair types to export (None: all, O>O_O included)
    image_paths: Literal["relative", "absolute"] = "relative"  # LLaMA-Factory image paths
    hf_images: Literal["embedded", "paths"] = "embedded"  # HF: image bytes in the Parquet, or paths
    hf_text: bool = False  # HF: also the text-only configs sft_text / dpo_text (no image part)
    lacot_image_root: str | None = None  # LaCoT image paths are relative to this (default: its folder)
    lacot_keep_tags: bool = False  # LaCoT: keep <think>/<answer> tags (and the prompt asking for them)

    @model_validator(mode="after")
    def _known_pair_types(self) -> ExportConfig:
        known = {t.value for t in PairType}
        unknown = sorted(set(self.pair_types or ()) - known)
        if unknown:
            raise ValueError(f"export.pair_types: unknown {unknown}; known: {sorted(known)}")
        return self


class PipelineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ask: AskConfig = AskConfig()
    think: ThinkConfig = ThinkConfig()
    think_harder: ThinkHarderConfig = ThinkHarderConfig()
    verify: VerifyConfig = VerifyConfig()
    scoring: ScoringConfig = ScoringConfig()
    judge: JudgeConfig = JudgeConfig()
    select: SelectConfig = SelectConfig()
    engines: Engines = Engines()
    storage: str = "data"  # local folder (relative to the config file) or fsspec URL
    exports: str = "exports"  # local folder (relative to the config file) or fsspec URL
    export: ExportConfig = ExportConfig()
    checks: ChecksConfig = ChecksConfig()
    automation: AutomationConfig = AutomationConfig()

    @model_validator(mode="after")
    def _scoring_needs_a_scorer(self) -> PipelineConfig:
        vlm = self.engines.vlm
        if self.scoring.enabled and vlm.kind == "openai" and vlm.server_kind != "vllm":
            raise ValueError(
                f"scoring.enabled = true needs engines.vlm.server_kind = vllm (a {vlm.server_kind} server "
                "returns no prompt log-probabilities), or kind = transformers or vllm; or set scoring.enabled = false"
            )
        return self

    @model_validator(mode="after")
    def _top_k_needs_scores(self) -> PipelineConfig:
        if self.think_harder.expand_top_k_by_reward and not self.scoring.enabled:
            raise ValueError(
                "think_harder.expand_top_k_by_reward ranks short CoTs by their rationale scores: "
                "set scoring.enabled = true, or expand_top_k_by_reward = 0"
            )
        return self

    def engine_roles(self) -> list[str]:
        """The engine roles the pipeline uses: the judge's only when it is on."""
        return ["ask", "vlm", "reasoner", *(["judge"] if self.judge.enabled else [])]


CONFIG_ENV = "LPT_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "lpt.toml"


class _EngineEnvironment(EnvSettingsSource):
    """Engine overrides from the environment, `LPT_<ROLE>_<FIELD>` (LPT_REASONER_KIND=openai,
    LPT_REASONER_BASE_URL=http://…; dict fields as JSON), as `engines.<role>.<field>`. The
    variables are read against `Engines`: the roles' tables sit under `engines`, and two roles
    (ask, judge) share their names with stage tables. Variables naming no engine field are
    ignored; `variables` says which variable set each key, for error messages."""

    def __init__(self) -> None:
        super().__init__(
            Engines,  # type: ignore[arg-type]  # a plain model: only its fields are read
            env_prefix="LPT_",
            env_nested_delimiter="_",
            env_nested_max_split=1,  # LPT_REASONER_BASE_URL: role `reasoner`, field `base_url`
            case_sensitive=False,
        )
        self.variables: dict[tuple[str, ...], str] = {}
        self._not_json: dict[str, ValueError] = {}

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        """A dict field's value that is not JSON is kept as text and reported by __call__,
        which knows its variable."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as error:
            self._not_json[field_name] = error
            return value

    def __call__(self) -> dict[str, Any]:
        roles: dict[str, dict[str, Any]] = {}
        for role, fields in super().__call__().items():
            known = (
                {key: value for key, value in fields.items() if key in ENGINE_FIELDS}
                if isinstance(fields, dict)
                else {}
            )
            for key, value in known.items():
                variable = f"LPT_{role}_{key}".upper()
                if key in self._not_json and isinstance(value, str):
                    raise ConfigError(f"${variable}: not a JSON object ({self._not_json[key]})")
                self.variables[("engines", role, key)] = variable
            if known:
                roles[role] = known
        return {"engines": roles} if roles else {}


class PipelineSettings(PipelineConfig, BaseSettings):
    """PipelineConfig with its sources, as load_config reads it: a TOML file, under the engine
    overrides from the environment (_EngineEnvironment)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")


def load_config(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Read a TOML config ($LPT_CONFIG, else lpt.toml beside the package), then apply engine
    overrides from the environment (`LPT_<ROLE>_<FIELD>`, e.g. LPT_REASONER_KIND=openai,
    LPT_REASONER_BASE_URL=http://…): a cluster job can point a role at another engine without
    editing the file. Relative paths resolve against the file's folder."""
    named = path or os.environ.get(CONFIG_ENV)
    chosen = Path(named or DEFAULT_CONFIG)
    if named and not chosen.is_file():
        raise ConfigError(f"{chosen}: no such config file")
    environment = _EngineEnvironment()
    try:
        file = TomlConfigSettingsSource(PipelineSettings, toml_file=chosen)  # none there: the defaults
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{chosen}: not valid TOML ({error})") from error
    try:
        # `_build_sources` is a documented init argument that the dataclass-style signature hides.
        settings = PipelineSettings(_build_sources=((environment, file), {}))  # pyright: ignore[reportCallIssue]
    except ValidationError as error:
        raise ConfigError(describe_config_error(chosen, error, environment.variables)) from error
    config = PipelineConfig(**dict(settings))
    return config.model_copy(
        update={
            "storage": _resolve(config.storage, chosen.parent),
            "exports": _resolve(config.exports, chosen.parent),
            "export": config.export.model_copy(
                update={
                    "lacot_image_root": config.export.lacot_image_root
                    and _resolve(config.export.lacot_image_root, chosen.parent)
                }
            ),
            "automation": config.automation.model_copy(
                update={"watch": tuple(_resolve(folder, chosen.parent) for folder in config.automation.watch)}
            ),
        }
    )


class ConfigError(ValueError):
    """A config the user must correct; the message names the file, the key and what it takes."""


def describe_config_error(path: Path, error: ValidationError, from_env: dict[tuple[str, ...], str]) -> str:
    """The first problem as one line: file, dotted key, a "did you mean" for a misspelt key or
    value, and what is accepted; further problems are counted, not listed."""
    problem = error.errors()[0]
    location = tuple(str(part) for part in problem["loc"])
    key = ".".join(location)
    where = f"${from_env[location]}" if location in from_env else str(path)
    if problem["type"] == "extra_forbidden":
        known = sorted(_fields_at(location[:-1]))
        close = difflib.get_close_matches(location[-1], known, n=1)
        hint = (
            f"did you mean {'.'.join((*location[:-1], close[0]))!r}?"
            if close
            else f"known keys here: {', '.join(known)}"
        )
        text = f"{where}: unknown key {key!r}; {hint}"
    elif problem["type"] in ("literal_error", "enum"):
        accepted = re.findall(r"'([^']*)'", str(problem.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(str(problem["input"]), accepted, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        text = f"{where}: {key} = {problem['input']!r} is not accepted; {hint}accepted: {', '.join(accepted)}"
    else:
        value = f" = {problem['input']!r}" if not isinstance(problem.get("input"), dict) else ""
        text = f"{where}: {key}{value}: {problem['msg']}"
    more = error.error_count() - 1
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _fields_at(location: tuple[str, ...]) -> list[str]:
    """The keys a config table takes at a dotted location (the top level for ())."""
    model: type[BaseModel] = PipelineConfig
    for part in location:
        if model is Engines and part in model.model_fields:  # an engine table, of any kind
            return list(ENGINE_FIELDS)
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _resolve(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())
