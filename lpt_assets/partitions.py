"""Image shards: one dynamic partition per fixed group of images from one caption source, and
the few rules for grouping them into runs (ranges must be contiguous in registration order)."""

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

from dagster import DagsterInstance, DagsterRunStatus, DynamicPartitionsDefinition, RunsFilter

from lpt_assets._dagster_compat import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

SHARDS = "shards"  # the partitions definition's name, as the instance stores its keys
shards = DynamicPartitionsDefinition(name=SHARDS)
# Runs that still hold their shards: not to be doubled, nor their shards removed under them.
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def chunks(keys: Sequence[str], size: int | None) -> Iterator[list[str]]:
    """`keys` in pieces of at most `size` (all at once when None)."""
    step = size or max(len(keys), 1)
    for start in range(0, len(keys), step):
        yield list(keys[start : start + step])


def contiguous(ordered_keys: Sequence[str], chosen: Collection[str], limit: int | None = None) -> Iterator[list[str]]:
    """Maximal runs of chosen keys in registration order, cut at `limit` keys: a partition-range
    run can only name a contiguous range."""
    run: list[str] = []
    for key in ordered_keys:
        if key in chosen:
            run.append(key)
        elif run:
            yield from chunks(run, limit)
            run = []
    if run:
        yield from chunks(run, limit)


def shards_of_run(tags: Mapping[str, str], ordered_keys: Sequence[str]) -> list[str]:
    """The shards a run covers, from its partition tag or its partition-range tags (none when
    a range names a shard that is not registered)."""
    return _shards_of_run(tags, ordered_keys, {})


def range_tags(first: str, last: str) -> dict[str, str]:
    """Dagster's partition-range tags for a run over the contiguous shards `first` to `last`
    (what `_shards_of_run` reads back)."""
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


def shards_of_runs(runs_tags: Iterable[Mapping[str, str]], ordered_keys: Sequence[str]) -> set[str]:
    """The shards any of these runs covers; the keys' positions are found once for all runs."""
    position: dict[str, int] = {}
    return {key for tags in runs_tags for key in _shards_of_run(tags, ordered_keys, position)}


def _shards_of_run(tags: Mapping[str, str], ordered_keys: Sequence[str], position: dict[str, int]) -> list[str]:
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    if not position:  # filled on the first range: runs of one shard need no positions
        position.update((key, index) for index, key in enumerate(ordered_keys))
    if start not in position or end not in position:
        return []
    return list(ordered_keys[position[start] : position[end] + 1])


def shards_in_flight(instance: DagsterInstance, ordered_keys: Sequence[str]) -> set[str]:
    """Shards named by the partition or partition-range tags of queued and running runs."""
    records = instance.get_run_records(filters=RunsFilter(statuses=IN_FLIGHT))
    return shards_of_runs([record.dagster_run.tags for record in records], ordered_keys)
