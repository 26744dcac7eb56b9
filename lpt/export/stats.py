"""Counts per exported shard, summed into the totals the index files show. Totals are kept by
adding a shard's new counts and subtracting its old ones, so binding a new shard into the index
never reads the other shards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from lpt.records import DpoPair, SftSample


class Funnel(BaseModel):
    """Rows per stage, captions to kept traces: where the data thinned out."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    images: int = 0  # validated captions
    mcqs: int = 0
    short_cots: int = 0
    long_cots: int = 0
    kept_short: int = 0  # verified traces kept
    kept_long: int = 0


class Stats(BaseModel):
    """One shard's exported counts (shards = 1), or the sum over shards."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    shards: int = 0
    funnel: Funnel = Funnel()
    images: int = 0  # distinct images with an exported row
    mcqs: int = 0  # distinct MCQs with an exported row
    sft_by_label: dict[str, int] = {}
    dpo_by_type: dict[str, int] = {}
    hf_bytes: dict[str, int] = {}  # bytes of the HF Parquet parts per config

    @property
    def sft_rows(self) -> int:
        return sum(self.sft_by_label.values())

    @property
    def dpo_rows(self) -> int:
        return sum(self.dpo_by_type.values())

    def _combine(self, other: Stats, sign: int) -> Stats:
        def counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            merged = Counter(a)
            for key, value in b.items():
                merged[key] += sign * value
            return {k: v for k, v in sorted(merged.items()) if v}

        funnel = {name: getattr(self.funnel, name) + sign * getattr(other.funnel, name) for name in Funnel.model_fields}
        return Stats(
            shards=self.shards + sign * other.shards,
            funnel=Funnel(**funnel),
            images=self.images + sign * other.images,
            mcqs=self.mcqs + sign * other.mcqs,
            sft_by_label=counts(self.sft_by_label, other.sft_by_label),
            dpo_by_type=counts(self.dpo_by_type, other.dpo_by_type),
            hf_bytes=counts(self.hf_bytes, other.hf_bytes),
        )

    def __add__(self, other: Stats) -> Stats:
        return self._combine(other, 1)

    def __sub__(self, other: Stats) -> Stats:
        return self._combine(other, -1)


def shard_stats(
    sft: Sequence[SftSample], dpo: Sequence[DpoPair], funnel: Funnel, hf_bytes: dict[str, int] | None = None
) -> Stats:
    return Stats(
        shards=1,
        funnel=funnel,
        images=len({s.image_id for s in sft} | {p.image_id for p in dpo}),
        mcqs=len({s.mcq_id for s in sft} | {p.mcq_id for p in dpo}),
        sft_by_label=dict(sorted(Counter(s.label.value for s in sft).items())),
        dpo_by_type=dict(sorted(Counter(p.pair_type.value for p in dpo).items())),
        hf_bytes=dict(sorted((hf_bytes or {}).items())),
    )
