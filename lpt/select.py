"""SFT selection and DPO pair mining over verified traces, per MCQ, with seeded RNGs.

Each MCQ gets its own RNG seeded from a stable hash of (config seed, MCQ id[, pair type]);
only the SFT set's X_O share is balanced over the whole shard, so how many self-corrections an
MCQ gives depends on its shard, never on other shards. MCQs with no
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


def _by_mcq(verified: list[Verified], prompts: Mapping[str, TrainingPrompt]) -> dict[str, list[Verified]]:
    """Kept, labelled traces grouped by MCQ (only MCQs with a prompt), each sorted by id."""
    groups: dict[str, list[Verified]] = defaultdict(list)
    for row in verified:
        if row.kept and row.label is not None and row.mcq_id in prompts:
            groups[row.mcq_id].append(row)
    return {mcq_id: sorted(rows, key=lambda r: r.trace_id) for mcq_id, rows in sorted(groups.items())}


def _weighted_sample(rows: list[Verified], k: int, rng: random.Random) -> list[Verified]:
    """k rows without replacement, each draw proportional to response length (Efraimidis-
    Spirakis keys), so longer traces are more likely to be chosen."""
    keyed = sorted(rows, key=lambda r: rng.random() ** (1.0 / max(r.response_tokens, 1)), reverse=True)
    return keyed[:k]


def _quotas(groups: Mapping[str, list[Verified]], config: SelectConfig) -> dict[str, tuple[int, int]]:
    """(X_O, O/O_O) counts per MCQ. Each MCQ first takes X_O up to `self_correction_share` of
    its `sft_per_mcq` slots and fills the rest with O/O_O; then, while X_O are under that share
    of the whole shard's set, MCQs with unused self-corrections take one more each, round-robin
    in a seeded order: into a free slot, else in place of an O/O_O. Self-corrections cluster on
    hard MCQs, so a per-MCQ share alone leaves most of them unused."""
    available: dict[str, tuple[int, int]] = {}
    quotas: dict[str, tuple[int, int]] = {}
    for mcq_id, rows in groups.items():
        corrections = sum(1 for r in rows if r.label is Label.X_O)
        correct = sum(1 for r in rows if r.label in (Label.O, Label.O_O))
        available[mcq_id] = (corrections, correct)
        x = min(corrections, round(config.sft_per_mcq * config.self_correction_share))
        quotas[mcq_id] = (x, min(correct, config.sft_per_mcq - x))
    order = sorted(groups, key=lambda mcq_id: stable_id("sft-balance", config.seed, mcq_id))

    def under_share() -> bool:
        x_total = sum(x for x, _ in quotas.values())
        return x_total < config.self_correction_share * sum(x + o for x, o in quotas.values())

    moved = True
    while moved and under_share():
        moved = False
        for mcq_id in order:
            x, o = quotas[mcq_id]
            if x < available[mcq_id][0] and (x + o < config.sft_per_mcq or o > 0) and under_share():
                quotas[mcq_id] = (x + 1, o if x + o < config.sft_per_mcq else o - 1)
                moved = True
    return quotas


def _ranked(rows: list[Verified], k: int, rewards: Mapping[str, float]) -> list[Verified]:
    """The k rows whose short CoT has the highest reward (unscored ones last; ties by id)."""
    return sorted(rows, key=lambda r: (-rewards.get(r.cot_id, float("-inf")), r.trace_id))[:k]


def select_sft(
    verified: list[Verified],
    prompts: Mapping[str, TrainingPrompt],
    config: SelectConfig,
    rewards: Mapping[str, float] | None = None,
) -> list[SftSample]:
    """Up to `sft_per_mcq` traces per MCQ from O, O_O and X_O, self-corrections (X_O) about
    `self_correction_share` of the shard's SFT set where enough exist (`_quotas`),
    each group drawn length-weighted with the MCQ's own seeded RNG, or, with `rank_by_reward`,
    the best by their short CoT's reward (`rewards`: cot id -> LaCoT reward)."""
    samples: list[SftSample] = []
    groups = _by_mcq(verified, prompts)
    quotas = _quotas(groups, config)
    for mcq_id, rows in groups.items():
        rng = _rng("sft", config.seed, mcq_id)
        corrections = [r for r in rows if r.label is Label.X_O]
        correct = [r for r in rows if r.label in (Label.O, Label.O_O)]
        n_corrections, n_correct = quotas[mcq_id]
        if config.rank_by_reward and rewards:
            chosen = _ranked(corrections, n_corrections, rewards) + _ranked(correct, n_correct, rewards)
        else:
            chosen = _weighted_sample(corrections, n_corrections, rng)
            chosen += _weighted_sample(correct, n_correct, rng)
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


def mine_pairs(verified: list[Verified], prompts: Mapping[str, TrainingPrompt], config: SelectConfig) -> list[DpoPair]:
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
            for chosen, rejected in _rng("dpo", config.seed, mcq_id, pair_type.value).sample(candidates, k):
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
