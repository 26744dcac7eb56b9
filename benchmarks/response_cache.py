"""Does a rerun's response-cache work follow its own shard, whatever else the cache holds?

For 10k, 100k and 1M cached entries of *other* shards, a rerun of one fully cached shard's
stage (512 requests: a DOCCI shard of 64 images at 8 MCQs each, 10 samples apiece of the
reference run's length) goes through the stage's real path (`GenerationRun`: every answer from
the cache, the engine never loaded). Each measurement runs in a fresh process, which reports the
seconds of cache work, how much its peak memory grew past what the imports took, and its peak.
The previous layout (one folder per engine, every batch file read into memory at the first
look-up) is measured beside it where it finishes in reasonable time.

    python -m benchmarks.response_cache [--sizes 10000 100000 1000000]

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SHARD_REQUESTS = 512
OTHER_PER_SHARD = 1000  # entries per other shard (a shard's stage-2 partition holds 512-5,120)
PREVIOUS_UP_TO = 100_000  # the previous layout needs minutes and gigabytes beyond this


def _requests() -> list[Any]:
    from lpt.config import Sampling
    from lpt.prompts import ChatPrompt
    from lpt_assets.generation import to_request

    sampling = Sampling(n=10, max_tokens=1024)
    return [
        to_request(ChatPrompt(key=f"m{i}", system="sys", user=f"Question {i} about image {i // 8}?"), sampling)
        for i in range(SHARD_REQUESTS)
    ]


def _result(request: Any, words: int) -> dict[str, Any]:
    text = ("I look closely at the picture and compare each option. " * (words // 10 + 1))[: words * 6]
    completion = {
        "text": text + "</think>\n<answer>(B)</answer>",
        "finish_reason": "stop",
        "completion_tokens": words,
        "logprobs": None,
    }
    return {"prompt_tokens": 300, "completions": [completion] * 10, "error": None, "error_kind": None}


def _other(i: int) -> str:
    return (
        json.dumps(
            {
                "key": uuid.uuid4().hex * 2,
                "result": {
                    "prompt_tokens": 300,
                    "completions": [
                        {"text": f"other answer {i}", "finish_reason": "stop", "completion_tokens": 3, "logprobs": None}
                    ],
                    "error": None,
                    "error_kind": None,
                },
            }
        )
        + "\n"
    )


def _engine() -> Any:
    from lpt_resources.engines.resource import VLLMEngineResource

    return VLLMEngineResource(model="bench", dtype="float32")


def build(base: Path, others: int, layout: str) -> None:
    """A cache holding the shard under test, fully, and `others` entries of other shards."""
    from lpt_resources.cache import ResponseCache

    cache = ResponseCache(str(base), _engine().cache_identity())
    folder = Path(cache.folder)
    ours = "".join(json.dumps({"key": r.fingerprint(), "result": _result(r, 180)}) + "\n" for r in _requests())
    if layout == "previous":
        folder.mkdir(parents=True)
        (folder / "batch-ours.jsonl").write_text(ours)
        for start in range(0, others, 256):  # the previous code wrote one file per 256 requests
            (folder / f"batch-{start:08d}.jsonl").write_text(
                "".join(_other(i) for i in range(start, min(others, start + 256)))
            )
        return
    (folder / "simple_cots" / "shard-under-test").mkdir(parents=True)
    (folder / "simple_cots" / "shard-under-test" / "part-ours.jsonl").write_text(ours)
    for shard in range(others // OTHER_PER_SHARD):
        part = folder / "simple_cots" / f"other-{shard:05d}"
        part.mkdir()
        (part / "part-0.jsonl").write_text("".join(_other(i) for i in range(OTHER_PER_SHARD)))


def measure(base: str, layout: str) -> dict[str, float]:
    """In this (fresh) process: the rerun's cache work, its seconds and peak-memory growth."""
    from lpt_assets.generation import GenerationRun

    requests = _requests()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if layout == "previous":
        entries: dict[str, Any] = {}
        for path in sorted(Path(base).glob("response_cache/*/batch-*.jsonl")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                entries[entry["key"]] = entry
        hits = sum(1 for r in requests if r.fingerprint() in entries)
    else:
        run = GenerationRun(
            _engine(),
            (("shard-under-test", r, i) for i, r in enumerate(requests)),
            stage="simple_cots",
            cache_base=base,
            total=len(requests),
        )
        list(run)
        hits = run.stats.cache_hits
        assert run.stats.requests_sent == 0
    seconds = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert hits == len(requests)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": round(seconds, 3),
        "peak_memory_growth_mb": round(grown / 1024, 1),
        "process_peak_rss_mb": round(peak / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--measure", nargs=2, metavar=("BASE", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    rows = []
    for size in args.sizes:
        row: dict[str, Any] = {"other_entries": size, "shard_requests": SHARD_REQUESTS}
        for layout in ("per_shard", "previous"):
            if layout == "previous" and size > PREVIOUS_UP_TO:
                row[layout] = "not run: it reads every entry (about 7 GB and minutes at 1M)"
                continue
            with tempfile.TemporaryDirectory() as base:
                build(Path(base), size, layout)
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.response_cache", "--measure", base, layout],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row[layout] = json.loads(done.stdout)
        rows.append(row)
    print(json.dumps({"rerun_of_one_cached_shard": rows}, indent=2))


if __name__ == "__main__":
    main()
