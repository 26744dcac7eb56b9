"""A stage that asks an engine, as an object: which tables it reads and writes, how it turns
its input rows into work, how it asks for each work item and how it parses the reply into rows
and quarantined rows. The Dagster layer (lpt_assets/assets/generate.py) runs every stage the
same way, so adding a stage is one subclass and its place in `STAGES` (lpt/stages.py); nothing
here knows Dagster or engines (replies and engines are described by what a stage reads of them)."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from lpt.config import PipelineConfig, Sampling
from lpt.prompts import ChatPrompt
from lpt.records import FinishReason, Quarantined, Record
from lpt.tables import QUARANTINES, Table

W = TypeVar("W")  # a work item: what one first request is built from
R = TypeVar("R")  # a row of the stage's table


class Ask(Record):
    """One request, engine-neutral: a prompt and how to sample it (`target`: score that text
    after the prompt instead of generating)."""

    prompt: ChatPrompt
    sampling: Sampling
    n: int | None = None
    max_tokens: int | None = None
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    banned_words: tuple[str, ...] = ()
    image_max_side: int | None = None
    salt: str = ""
    target: str | None = None


class Sample(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def completion_tokens(self) -> int: ...


class Reply(Protocol):
    """What a stage reads of an engine's result."""

    @property
    def request_id(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completions(self) -> Sequence[Sample]: ...
    @property
    def error(self) -> str | None: ...
    @property
    def target_logprobs(self) -> list[float] | None: ...


class LoadedEngine(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def supports_images(self) -> bool: ...


class EngineView(Protocol):
    """What a stage may know of its engine: the model its rows are credited to, and the loaded
    engine (loading it: only stages that must know what it can read ask)."""

    @property
    def model(self) -> str: ...
    def get(self) -> LoadedEngine: ...


@dataclass(frozen=True)
class Attempt:
    """Which request of a work item a reply answers: the first (`retried`: its samples asked
    again under the stage's retry policy, so not kept from this reply), or the retry of the
    sample at slot `retry_of`."""

    retried: tuple[int, ...] = ()
    retry_of: int | None = None


FIRST = Attempt()


@dataclass(frozen=True)
class RetryPolicy:
    """A sample cut at the token limit is asked again, once and alone, with a larger budget;
    cut again, it is kept as it is."""

    max_tokens: int

    def slots(self, reply: Reply) -> tuple[int, ...]:
        """The samples of a first reply to ask again."""
        return tuple(slot for slot, sample in enumerate(reply.completions) if sample.finish_reason == "length")


@dataclass(frozen=True)
class Parsed(Generic[R]):
    """What one reply gave: rows, rows refused with a reason, and a note for the log."""

    rows: list[R] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    warning: str | None = None


# ---- figures a person reads about a run: plain values, or these, drawn by the Dagster layer


@dataclass(frozen=True)
class Counts:
    counts: Mapping[str, int]
    name: str


@dataclass(frozen=True)
class Rows:
    """A few sample rows."""

    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Histogram:
    values: Sequence[float]
    title: str


@dataclass(frozen=True)
class Json:
    value: Any


Figure = int | float | str | bool | Counts | Rows | Histogram | Json


@dataclass(frozen=True)
class Plan(Generic[W, R]):
    """A run's work per shard, and what is settled without the engine (placed after the
    shard's work, in this order); `run_wide`: figures true of the whole run."""

    work: dict[str, list[W]]
    settled: dict[str, list[Parsed[R]]] = field(default_factory=dict)
    run_wide: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardOutcome(Generic[W, R]):
    """One written shard: its work, its rows, what was refused, its use of the engine."""

    work: Sequence[W]
    settled: Sequence[Parsed[R]]
    rows: Sequence[R]
    quarantined: Sequence[Quarantined]
    engine: Mapping[str, int]

    def written(self) -> dict[str, Figure]:
        """What every stage reports of a shard: rows written, rows refused and why, engine use."""
        reasons = Counter(q.reason for q in self.quarantined if q.reason)
        return {
            "rows_out": len(self.rows),
            "quarantined": len(self.quarantined),
            "drop_reasons": Counts(dict(sorted(reasons.items())), "reason"),
            **self.engine,
        }


Inputs = Mapping[Table[Any], Mapping[str, list[Any]]]  # table -> shard -> rows


def every_row(inputs: Inputs, table: Table[Any]) -> list[Any]:
    return [row for rows in inputs[table].values() for row in rows]


class Stage(abc.ABC, Generic[W, R]):
    """A stage run through an engine. The class names its table (lpt/tables.py: its asset's
    name and record type, and its quarantine there if it writes one) and engine role; an
    instance holds its config."""

    table: ClassVar[Table[Any]]
    role: ClassVar[str]
    group: ClassVar[str] = "generate"

    # the assets it runs after, in order (lineage; it may read more of them): tables, or by
    # name an asset that stores none
    deps: tuple[Table[Any] | str, ...]
    reads: tuple[Table[Any], ...]  # the tables it reads
    # (table, role) that may run next in the same run on the loaded engine, if of the same settings
    hands_over_to: tuple[Table[Any], str] | None = None
    retry: RetryPolicy | None = None  # applied by the runner to every first reply

    @abc.abstractmethod
    def __init__(self, config: PipelineConfig) -> None:
        """Every stage is built from the pipeline config alone, keeping the parts it reads."""

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def quarantine(self) -> Table[Quarantined] | None:
        """Where the rows it refuses go; None: it writes no quarantine."""
        return QUARANTINES.get(self.table)

    @abc.abstractmethod
    def plan(self, inputs: Inputs, engine: EngineView) -> Plan[W, R]:
        """The run's work from its input rows (`inputs`: every read table, shard by shard)."""

    @abc.abstractmethod
    def ask(self, item: W, attempt: Attempt) -> Ask: ...

    @abc.abstractmethod
    def parse(self, item: W, reply: Reply, attempt: Attempt) -> Parsed[R]: ...

    def retries(self, attempt: Attempt, reply: Reply) -> tuple[int, ...]:
        """The samples of a reply to ask again: a first reply's, as the retry policy says."""
        if self.retry is None or attempt.retry_of is not None:
            return ()
        return self.retry.slots(reply)

    def answer(self, item: W, reply: Reply, attempt: Attempt) -> Parsed[R]:
        """Parse a reply; a first one learns which of its samples are asked again."""
        if attempt.retry_of is None:
            attempt = Attempt(retried=self.retries(attempt, reply))
        return self.parse(item, reply, attempt)

    def collect(self, work: Sequence[W], found: Mapping[int, Sequence[Any]]) -> list[R]:
        """The shard's rows from what each work item gave (by its position in the work)."""
        return [row for _, rows in sorted(found.items()) for row in rows]

    @abc.abstractmethod
    def figures(self, shard: ShardOutcome[W, R]) -> dict[str, Figure]:
        """What a person reads about one written shard."""

    def run_figures(self, plan: Plan[W, R], engine: Mapping[str, Figure]) -> dict[str, Figure]:
        """What is true of the whole run: its engine figures, then the plan's."""
        return {**engine, **plan.run_wide}


def refused_by_engine(stage: str, item_id: str, reply: Reply) -> Quarantined:
    """A request the engine refused for its own content (too long, say): the row is kept out
    with the engine's words, and the rest of the shard goes on."""
    if reply.error:
        return Quarantined(stage=stage, item_id=item_id, reason="engine_refused", detail=reply.error)
    return Quarantined(stage=stage, item_id=item_id, reason="no_output", detail="the engine returned no completion")
