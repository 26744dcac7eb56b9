"""Does the pipeline keep the engine as busy as driving it directly?

The same stage-2 requests (built by the stage's own prompt code) go through the raw engine
and through the pipeline's generation path (response-cache look-ups, checkpoint batches,
cache writes), alternating, on one warm engine in one process. Prints JSON with both
throughputs (completion tokens per second) and their ratio.

    python -m benchmarks.engine_efficiency                      # transformers, SmolLM2
    python -m benchmarks.engine_efficiency --kind vllm --model PATH --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from lpt.config import Sampling
from lpt.prompts import present, think_prompt
from lpt.records import MCQ, Caption
from lpt_assets.generation import generate, to_request
from lpt_resources.captions.sources import SAMPLE_CAPTIONS
from lpt_resources.engines.base import GenerationRequest
from lpt_resources.engines.resource import EngineResource


def stage2_requests(count: int, max_tokens: int, n: int) -> list[GenerationRequest]:
    """Stand-in stage-2 prompts over the bundled descriptions, one MCQ per request."""
    rows = [json.loads(line) for line in SAMPLE_CAPTIONS.read_text().splitlines()]
    sampling = Sampling(n=n, temperature=0.8, top_p=0.9, max_tokens=max_tokens)
    requests = []
    for index in range(count):
        row = rows[index % len(rows)]
        caption = Caption(
            image_id=row["image_id"], source="sample", split="train", image_path="unused",
            description=row["description"], width=1, height=1,
        )
        mcq = MCQ(
            mcq_id=f"bench-{index}", image_id=caption.image_id,
            question=f"Which detail of the photo is described correctly? (variant {index})",
            options=["The main colour", "The number of objects", "The lighting", "The background"],
            answer="The lighting", reasoning_type="recognition",
        )
        requests.append(to_request(think_prompt(present(mcq), caption, stand_in=True), sampling, max_tokens=max_tokens))
    return requests


def measure(resource: EngineResource, requests: list[GenerationRequest], rounds: int) -> dict[str, float]:
    engine = resource.get()
    engine.generate(requests[:2])  # load and warm up outside the timings
    raw, piped = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        results = engine.generate(requests)
        raw.append(sum(c.completion_tokens for r in results for c in r.completions) / (time.perf_counter() - started))
        with tempfile.TemporaryDirectory() as cache_base:  # empty cache: everything is sent
            started = time.perf_counter()
            results, stats = generate(resource, requests, cache_base=cache_base)
            elapsed = time.perf_counter() - started
        assert stats.requests_sent == len(requests)
        piped.append(stats.completion_tokens / elapsed)
    raw_tps, piped_tps = statistics.median(raw), statistics.median(piped)
    return {
        "raw_tokens_per_second": round(raw_tps, 2),
        "pipeline_tokens_per_second": round(piped_tps, 2),
        "ratio": round(piped_tps / raw_tps, 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    resource = EngineResource(kind=args.kind, model=args.model, dtype=args.dtype, batch_size=args.batch_size)
    requests = stage2_requests(args.requests, args.max_tokens, args.n)
    figures = measure(resource, requests, args.rounds)
    resource.get().close()
    print(json.dumps({"engine": args.kind, "model": args.model, "requests": len(requests), "n": args.n, **figures}, indent=2))


if __name__ == "__main__":
    main()
