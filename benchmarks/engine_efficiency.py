"""Does the pipeline keep the engine as busy as driving it directly, and prepare images for free?

Throughput (vLLM, the CPU build in `.venv-vllm`, a tiny Qwen2 saved locally): the same stage-2
requests, built by the stage's own prompt code, go

- raw: to vLLM directly, all at once (`LLM.chat` with every conversation in one call);
- pipeline: through the stage's real path (`GenerationRun`: response-cache look-ups on an
  empty cache, the engine's stream, cache writes in groups);
- checkpoint batches: through the previous path, `checkpoint_every` requests handed to the
  engine and waited for before the next ones are sent (each batch cached as it completes);

alternating on one warm engine in one process. Per-request output lengths follow the real
length distribution of the reference run's stage-2 outputs (Qwen2.5-VL-7B, tokenised with the
Qwen tokenizer), scaled by `--length-scale`; the random-weight model needs `ignore_eos` to write
exactly that many tokens. On a CPU a decode step gets dearer as the batch grows, so a draining
batch costs less than on a GPU (whose step costs about the same at any batch size): few slots
(`--max-num-seqs 16`), a model whose weight reads dominate a step (the tiny Qwen2's 151k-token
head), and many checkpoints make the drains visible here.

Images: CPU milliseconds per stage-2 request spent preparing images for 2048x1536 JPEGs with 8
MCQs per image, through the vLLM engine's real preparation path (lazy work building, cache
look-ups, the feed, the prefetching image pool with draft decoding, work items), the model
replaced by a runner that takes items as fast as they come; against the previous loader (a full
decode and resize per request). Also the seconds from the stage's start until the first
prepared request is handed to the engine, for `--images` images.

    .venv-vllm/bin/python -m benchmarks.engine_efficiency [--requests 512] [--images 1000]

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lpt.config import Sampling  # noqa: E402
from lpt.prompts import present, think_prompt  # noqa: E402
from lpt.records import MCQ, Caption  # noqa: E402
from lpt_assets.generation import GenerationRun, ShardDone, generate, to_request  # noqa: E402
from lpt_resources.captions.sources import SAMPLE_CAPTIONS  # noqa: E402
from lpt_resources.engines.base import GenerationRequest  # noqa: E402
from lpt_resources.engines.resource import EngineResource, VLLMEngineResource  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def reference_run() -> Path:
    """The original method's real outputs: $LPT_REFERENCE_RUN, else ../shared beside the repo."""
    for candidate in (os.environ.get("LPT_REFERENCE_RUN"), REPO.parent / "shared" / "fixtures" / "reference-run"):
        if candidate and (Path(candidate) / "stage2_simple_cot_samples.jsonl").exists():
            return Path(candidate)
    sys.exit("the reference run's outputs are needed for real lengths: set LPT_REFERENCE_RUN")


def real_lengths(tokenizer: Any) -> list[int]:
    """Token counts of the reference run's 400 stage-2 outputs."""
    rows = [json.loads(line) for line in (reference_run() / "stage2_simple_cot_samples.jsonl").read_text().splitlines()]
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for row in rows for text in row["outputs"]]


def stage2_requests(
    count: int, lengths: list[int], *, image: str | None = None, per_image: int = 8
) -> list[GenerationRequest]:
    """Stage-2 prompts over the bundled descriptions (caption stand-in, or `image` when given),
    one sample per request, max_tokens drawn in turn from `lengths`."""
    rows = [json.loads(line) for line in SAMPLE_CAPTIONS.read_text().splitlines()]
    requests = []
    for index in range(count):
        row = rows[(index // per_image) % len(rows)]
        caption = Caption(
            image_id=f"{row['image_id']}-{index // per_image}",
            source="bench",
            split="train",
            image_path=image or "unused",
            description=row["description"],
            width=1,
            height=1,
        )
        mcq = MCQ(
            mcq_id=f"bench-{index}",
            image_id=caption.image_id,
            question=f"Which detail of the photo is shown correctly? (variant {index})",
            options=["The main colour", "The number of objects", "The lighting", "The background"],
            answer="The lighting",
            reasoning_type="recognition",
        )
        sampling = Sampling(
            n=1, temperature=0.7, top_p=0.8, repetition_penalty=1.05, max_tokens=lengths[index % len(lengths)]
        )
        prompt = think_prompt(present(mcq), caption, stand_in=image is None)
        requests.append(to_request(prompt, sampling, image_max_side=512))
    return requests


# ---------------------------------------------------------------------------------------- throughput


def _tokens(results: list[Any]) -> int:
    return sum(c.completion_tokens for r in results for c in r.completions)


def raw_vllm(engine: Any, requests: list[GenerationRequest]) -> float:
    """Completion tokens per second with every request handed to `LLM.chat` in one call."""
    from vllm import SamplingParams

    llm = engine.llm
    messages = [engine.build_messages(r) for r in requests]
    params = [SamplingParams(**engine.sampling_kwargs(r)) for r in requests]
    started = time.perf_counter()
    outputs = llm.chat(messages, params, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
    seconds = time.perf_counter() - started
    return sum(len(s.token_ids) for o in outputs for s in o.outputs) / seconds


def pipeline(resource: EngineResource, requests: list[GenerationRequest]) -> float:
    """Completion tokens per second through the stage's real path, from an empty cache."""
    with tempfile.TemporaryDirectory() as cache_base:
        started = time.perf_counter()
        results, stats = generate(resource, requests, cache_base=cache_base)
        seconds = time.perf_counter() - started
    assert stats.requests_sent == len(requests) and not stats.failed_requests
    return _tokens(results) / seconds


def checkpoint_batches(resource: EngineResource, requests: list[GenerationRequest], checkpoint_every: int) -> float:
    """The previous path: `checkpoint_every` requests at a time, each batch waited for (and
    cached) before the next is sent."""
    from lpt_resources.cache import ResponseCache

    engine = resource.get()
    with tempfile.TemporaryDirectory() as cache_base:
        cache = ResponseCache(cache_base, resource.cache_identity())
        started = time.perf_counter()
        tokens = 0
        for start in range(0, len(requests), checkpoint_every):
            batch = requests[start : start + checkpoint_every]
            results = engine.generate(batch)
            cache.put("bench/all", zip(batch, results))
            tokens += _tokens(results)
        seconds = time.perf_counter() - started
    return tokens / seconds


def throughput(args: argparse.Namespace, model: str) -> dict[str, Any]:
    from lpt_resources.engines.vllm_engine import VLLMEngine

    exact = VLLMEngine.sampling_kwargs
    # The random-weight model writes exactly the reference lengths: never stop at an EOS.
    VLLMEngine.sampling_kwargs = staticmethod(lambda req: {**exact(req), "ignore_eos": True})  # type: ignore[method-assign]
    resource = VLLMEngineResource(
        model=model,
        dtype="float32",
        max_num_seqs=args.max_num_seqs,
        max_model_len=2048,
        enforce_eager=True,
        flush_every=64,
    )
    engine = resource.get()
    tokenizer = engine.llm.get_tokenizer()
    lengths = [max(1, round(n * args.length_scale)) for n in real_lengths(tokenizer)]
    requests = stage2_requests(args.requests, lengths)
    engine.generate(requests[:4])  # warm up outside the timings
    figures: dict[str, list[float]] = {"raw": [], "pipeline": [], "checkpoint_batches": []}
    for _ in range(args.rounds):
        figures["raw"].append(raw_vllm(engine, requests))
        figures["pipeline"].append(pipeline(resource, requests))
        figures["checkpoint_batches"].append(checkpoint_batches(resource, requests, args.checkpoint_every))
    resource.release()
    engine.unpark()
    tps = {name: statistics.median(values) for name, values in figures.items()}
    return {
        "engine": "vllm (CPU build)",
        "requests": len(requests),
        "checkpoint_every": args.checkpoint_every,
        "checkpoints": round(len(requests) / args.checkpoint_every, 1),
        "max_num_seqs": args.max_num_seqs,
        "completion_tokens_per_request": {
            "mean": round(statistics.mean(lengths[: len(requests)]), 1),
            "p50": statistics.median(lengths),
            "max": max(lengths),
            "source": "reference run stage 2 (Qwen2.5-VL-7B), tokens x length_scale",
            "length_scale": args.length_scale,
        },
        "tokens_per_second": {name: round(value, 1) for name, value in tps.items()},
        "ratio": round(tps["pipeline"] / tps["raw"], 3),
        "ratio_checkpoint_batches": round(tps["checkpoint_batches"] / tps["raw"], 3),
        "rounds": args.rounds,
    }


# ---------------------------------------------------------------------------------------- images


def _photos(folder: Path, distinct: int, count: int) -> list[str]:
    """`count` paths of 2048x1536 JPEGs (scikit-image's photos, scaled up; `distinct` different
    files, hard-linked under other names: each path is read and decoded on its own)."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    paths = []
    for k in range(distinct):
        path = folder / f"photo-{k:03d}.jpg"
        Image.fromarray(sources[k % len(sources)]).resize((2048, 1536), Image.Resampling.BICUBIC).rotate(k).save(
            path, quality=90
        )
        paths.append(path)
    links = []
    for k in range(count):
        link = folder / f"image-{k:05d}.jpg"
        os.link(paths[k % distinct], link)
        links.append(str(link))
    return links


def _previous_load(location: str, max_side: int) -> Any:
    """The previous loader, for comparison: a full decode, then a resize, every request."""
    import io

    from PIL import Image

    with open(location, "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    image = image.convert("RGB")
    scale = max_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


class _TakingRunner:
    """Stands in for vLLM: takes prepared items as fast as the preparation hands them out,
    noting when the first one arrives, and refuses each (so nothing is cached)."""

    is_multimodal = True
    max_num_seqs = 256

    def __init__(self) -> None:
        self.first_item_at: float | None = None
        self.items = 0

    def stream(self, take: Any, depth: int) -> Any:
        from lpt_resources.engines.vllm_engine import _Raw

        while (item := take()) is not None:
            if self.first_item_at is None:
                self.first_item_at = time.monotonic()
            self.items += 1
            index = item.index
            del item  # the image goes, as vLLM would take it over
            yield _Raw(index=index, error="benchmark: not generated", error_kind="request")

    def close(self) -> None:
        pass


def images(args: argparse.Namespace, vl_model: str) -> dict[str, Any]:
    from lpt_resources.engines import vllm_engine as ve

    per_image = 8
    with tempfile.TemporaryDirectory() as folder:
        paths = _photos(Path(folder), distinct=16, count=args.images)
        # the previous loader on a sample of the images, 8 requests each
        sample = paths[:24]
        cpu = time.process_time()
        for path in sample:
            for _ in range(per_image):
                _previous_load(path, 512)
        previous_ms = (time.process_time() - cpu) * 1000 / (len(sample) * per_image)

        resource = VLLMEngineResource(model=vl_model)
        runner = _TakingRunner()
        key = resource.get().settings
        ve._ENGINES._loaded[key] = ve.LoadedLLM(
            key=key, runner=runner, load_seconds=0.0, is_multimodal=True, max_num_seqs=256
        )
        rows = [json.loads(line) for line in SAMPLE_CAPTIONS.read_text().splitlines()]
        count = args.images * per_image
        resource.get().special_texts()  # the tokenizer's special tokens, read once per engine (not per stage)
        cpu, started = time.process_time(), time.monotonic()

        def work():
            for index in range(count):
                row = rows[(index // per_image) % len(rows)]
                caption = Caption(
                    image_id=f"img-{index // per_image}",
                    source="bench",
                    split="train",
                    image_path=paths[index // per_image],
                    description=row["description"],
                    width=2048,
                    height=1536,
                )
                mcq = MCQ(
                    mcq_id=f"m-{index}",
                    image_id=caption.image_id,
                    question=f"Which detail is right? ({index})",
                    options=["Red", "Blue", "Green", "Amber"],
                    answer="Blue",
                    reasoning_type="attribute",
                )
                request = to_request(
                    think_prompt(present(mcq), caption, stand_in=False),
                    Sampling(n=10, max_tokens=1024),
                    image_max_side=512,
                )
                yield f"shard-{index // 512:05d}", request, index

        run = GenerationRun(resource, work(), stage="simple_cots", cache_base=folder, total=count)
        answered = sum(1 for event in run if not isinstance(event, ShardDone))
        pipeline_cpu_ms = (time.process_time() - cpu) * 1000 / count
        del ve._ENGINES._loaded[key]
        # image preparation alone, through the same prefetching loader
        from lpt_resources.engines.images import ImagePrefetcher, load_image

        prefetcher = ImagePrefetcher(keep=256)
        cpu = time.process_time()
        for index in range(count):
            location = paths[index // per_image]
            prefetcher.get((location, 512), lambda location=location: load_image(location, 512))
        image_ms = (time.process_time() - cpu) * 1000 / count
        prefetcher.close()
    assert answered == count and runner.items == count
    return {
        "images": args.images,
        "requests": count,
        "mcqs_per_image": per_image,
        "image_size": "2048x1536 JPEG, longest side capped at 512",
        "image_cpu_ms_per_request": round(image_ms, 2),
        "image_cpu_ms_per_request_previous_loader": round(previous_ms, 2),
        "pipeline_cpu_ms_per_request": round(pipeline_cpu_ms, 2),
        "seconds_to_first_request": round(runner.first_item_at - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--checkpoint-every", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--length-scale", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--skip-throughput", action="store_true", help="only the image figures (no vLLM needed)")
    args = parser.parse_args()
    from tests.tiny_models import tiny_qwen2, tiny_qwen2_5_vl

    with tempfile.TemporaryDirectory() as models:
        out: dict[str, Any] = {}
        if not args.skip_throughput:
            out["throughput"] = throughput(args, str(tiny_qwen2(Path(models) / "qwen2")))
        out["images"] = images(args, str(tiny_qwen2_5_vl(Path(models) / "qwen2.5-vl")))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
