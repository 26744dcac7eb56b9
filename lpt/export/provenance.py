"""The provenance manifest: one JSON line per exported row with its image, MCQ, short and long
CoT ids (for DPO the chosen and rejected trace ids), its label or pair type, the models and
config fingerprints that made it, and the shard and files that hold it. One part per shard."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lpt.export.common import sorted_unique
from lpt.records import DpoPair, SftSample

FOLDER = "provenance"
README_FILE = "README.md"


def _trace_kind(label: str) -> Literal["short", "long"]:
    return "long" if "_" in label else "short"


def provenance_rows(
    sft: Sequence[SftSample], dpo: Sequence[DpoPair], run_info: Mapping[str, object], shard: str | None = None
) -> list[dict[str, Any]]:
    """One dict per exported row, sorted by (kind, row id). Pass the rows exactly as exported
    (after any pair-type filter)."""
    run = json.loads(json.dumps(dict(run_info), sort_keys=True, default=str))
    where = {"shard": shard} if shard is not None else {}
    rows: list[dict[str, Any]] = []
    for s in sorted_unique(sft, "sample_id"):
        rows.append(
            {
                "kind": "sft",
                "row_id": s.sample_id,
                "image_id": s.image_id,
                "image_path": s.image_path,
                "mcq_id": s.mcq_id,
                "trace_id": s.trace_id,
                "cot_id": s.cot_id,
                "long_id": s.long_id,
                "label": s.label.value,
                "run": run,
                **where,
            }
        )
    for p in sorted_unique(dpo, "pair_id"):
        chosen_label, rejected_label = p.pair_type.value.split(">")
        rows.append(
            {
                "kind": "dpo",
                "row_id": p.pair_id,
                "image_id": p.image_id,
                "image_path": p.image_path,
                "mcq_id": p.mcq_id,
                "pair_type": p.pair_type.value,
                "chosen_id": p.chosen_id,
                "chosen_label": chosen_label,
                "chosen_kind": _trace_kind(chosen_label),  # short: a cot_id; long: a long_id
                "rejected_id": p.rejected_id,
                "rejected_label": rejected_label,
                "rejected_kind": _trace_kind(rejected_label),
                "run": run,
                **where,
            }
        )
    return rows


def readme(rows: int, shards: int) -> str:
    return f"""# Provenance

{rows} rows from {shards} shards: one JSON Lines file per shard, one line per exported SFT row
or DPO pair. Each line names its shard, image (id and path), MCQ, short CoT (`cot_id`) and long
CoT (`long_id`) ids, or for a pair the chosen and rejected trace ids with their labels and kinds
(`short`: a `cot_id`; `long`: a `long_id`), and `run`: the models per role and the config
fingerprints that made it. `row_id` is the `sample_id` or `pair_id` of the row in every export.
"""
