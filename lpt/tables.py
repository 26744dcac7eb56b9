"""Every stored table by name and record type, in one place: storage reads a table back as its
records and refuses rows of another type on write, and each table's name (its asset's name too)
is written once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from lpt.records import (
    Caption,
    DpoPair,
    JudgeVerdict,
    LongCot,
    McqScores,
    PresentedMCQ,
    Quarantined,
    SftSample,
    SimpleCot,
    Verified,
)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Table(Generic[M]):
    """A table of one record type, kept per shard under `name`."""

    name: str
    record: type[M]
    description: str = ""


def quarantine_of(table: Table) -> Table[Quarantined]:
    """The rows a stage refused while writing `table`, each with the reason a person can act on."""
    return Table(
        f"{table.name}_quarantine",
        Quarantined,
        f"The rows refused while writing {table.name}, with the reason for each (not used downstream).",
    )


CAPTIONS = Table("captions", Caption)
CAPTIONS_QUARANTINE = quarantine_of(CAPTIONS)
MCQS = Table("mcqs", PresentedMCQ)
MCQS_QUARANTINE = quarantine_of(MCQS)
SIMPLE_COTS = Table("simple_cots", SimpleCot)
SIMPLE_COTS_QUARANTINE = quarantine_of(SIMPLE_COTS)
RATIONALE_SCORES = Table("rationale_scores", McqScores)
LONG_COTS = Table("long_cots", LongCot)
LONG_COTS_QUARANTINE = quarantine_of(LONG_COTS)
VERIFIED = Table("verified", Verified)
JUDGE_VERDICTS = Table("judge_verdicts", JudgeVerdict)
JUDGE_VERDICTS_QUARANTINE = quarantine_of(JUDGE_VERDICTS)
SFT_SAMPLES = Table("sft_samples", SftSample)
DPO_PAIRS = Table("dpo_pairs", DpoPair)

# producing table -> its quarantine
QUARANTINES: dict[Table, Table[Quarantined]] = {
    CAPTIONS: CAPTIONS_QUARANTINE,
    MCQS: MCQS_QUARANTINE,
    SIMPLE_COTS: SIMPLE_COTS_QUARANTINE,
    LONG_COTS: LONG_COTS_QUARANTINE,
    JUDGE_VERDICTS: JUDGE_VERDICTS_QUARANTINE,
}
TABLES: dict[str, Table] = {
    table.name: table
    for table in (
        CAPTIONS,
        MCQS,
        SIMPLE_COTS,
        RATIONALE_SCORES,
        LONG_COTS,
        VERIFIED,
        JUDGE_VERDICTS,
        SFT_SAMPLES,
        DPO_PAIRS,
        *QUARANTINES.values(),
    )
}
