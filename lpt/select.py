"""SFT selection and DPO pair mining over verified traces, per MCQ, with seeded RNGs.

Each MCQ gets its own RNG seeded from a stable hash of (config seed, MCQ id[, pair type]),
so a shard's output does not depend on which other MCQs or shards ran with it. MCQs with no
training prompt are skipped: without the prompt a sample cannot be trained on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping

from lpt.config import SelectConfig
from lpt.records import DpoPair, Label, PairType, SftSample, TrainingPrompt, Verified, stable_id

_PAIR_LABELS: dict[PairType, tuple[Label, Label]] = {
    PairType.O_GT_X: (Label.O, Label.X),
    PairType.O_GT_X_X: (Label.O, Label.X_X),
    PairType.O_GT_O_X: (Label.O, Label.O_X),
    PairType.X_O_GT_X: (Label.X_O, Label.X),
    PairType.X_O_GT_X_X: (Label.X_O, Label.X_X),
    PairType.O_GT_O_O: (Label.O, Label.O_O),
}


def _rng(*parts: object) -> random.Random:
    """A generator seeded by a stable content hash (Python's hash() varies per process)."""
    return random.Random(int(stable_id(*parts), 16))


def _by_mcq(
    verified: list[Verified], prompts: Mapping[str, TrainingPrompt]
) -> dict[str, list[Verified]]:
    """Kept, labelled traces grouped by MCQ (only MCQs with a prompt), each sorted by id."""
    groups: dict[str, list[Verified]] = defaultdict(list)
    for row in verified:
        if row.kept and row.label is not None and row.mcq_id in prompts:
            groups[row.mcq_id].append(row)
    return {
        mcq_id: sorted(rows, key=lambda r: r.trace_id) for mcq_id, rows in sorted(groups.items())
    }


def _weighted_sample(rows: list[Verified], k: int, rng: random.Random) -> list[Verified]:
    """k rows without replacement, each draw proportional to response length (Efraimidis-
    Spirakis keys), so longer traces are more likely to be chosen."""
    keyed = sorted(
        rows, key=lambda r: rng.random() ** (1.0 / max(r.response_tokens, 1)), reverse=True
    )
    return keyed[:k]


def select_sft(
    verified: list[Verified], prompts: Mapping[str, TrainingPrompt], config: SelectConfig
) -> list[SftSample]:
    """Up to `sft_per_mcq` traces per MCQ from O, O_O and X_O: self-corrections (X_O) up to
    `self_correction_share` of the slots as available, the rest from O and O_O."""
    samples: list[SftSample] = []
    for mcq_id, rows in _by_mcq(verified, prompts).items():
        rng = _rng("sft", config.seed, mcq_id)
        corrections = [r for r in rows if r.label is Label.X_O]
        correct = [r for r in rows if r.label in (Label.O, Label.O_O)]
        n_corrections = min(
            len(corrections), round(config.sft_per_mcq * config.self_correction_share)
        )
        chosen = _weighted_sample(corrections, n_corrections, rng)
        chosen += _weighted_sample(correct, config.sft_per_mcq - len(chosen), rng)
        prompt = prompts[mcq_id]
        samples.extend(
            SftSample(
                sample_id=stable_id("sft", row.trace_id),
                trace_id=row.trace_id,
                label=row.label,
                mcq_id=mcq_id,
                image_id=row.image_id,
                cot_id=row.cot_id,
                long_id=row.long_id,
                image_path=prompt.image_path,
                system=prompt.system,
                prompt=prompt.prompt,
                response=row.response,
            )
            for row in chosen
            if row.label is not None
        )
    return samples


def mine_pairs(
    verified: list[Verified], prompts: Mapping[str, TrainingPrompt], config: SelectConfig
) -> list[DpoPair]:
    """Correctness pairs (O>X, O>X_X, O>O_X, X_O>X, X_O>X_X) and compactness pairs (O>O_O),
    at most `max_pairs_per_type_per_mcq` distinct (chosen, rejected) pairs per type and MCQ."""
    pairs: list[DpoPair] = []
    for mcq_id, rows in _by_mcq(verified, prompts).items():
        prompt = prompts[mcq_id]
        for pair_type, (good, bad) in _PAIR_LABELS.items():
            candidates = [
                (chosen, rejected)
                for chosen in rows
                if chosen.label is good
                for rejected in rows
                if rejected.label is bad
            ]
            k = min(config.max_pairs_per_type_per_mcq, len(candidates))
            for chosen, rejected in _rng("dpo", config.seed, mcq_id, pair_type.value).sample(
                candidates, k
            ):
                pairs.append(
                    DpoPair(
                        pair_id=stable_id(pair_type.value, chosen.trace_id, rejected.trace_id),
                        pair_type=pair_type,
                        mcq_id=mcq_id,
                        image_id=chosen.image_id,
                        chosen_id=chosen.trace_id,
                        rejected_id=rejected.trace_id,
                        image_path=prompt.image_path,
                        system=prompt.system,
                        prompt=prompt.prompt,
                        chosen=chosen.response,
                        rejected=rejected.response,
                    )
                )
    return pairs
