"""What does exporting one new shard cost once many are exported?

Builds shards of realistic rows (prompts, short and long CoTs from the reference run's real
Qwen2.5-VL outputs, small JPEG photos), registers them on a real temporary Dagster instance
(sqlite) with their materializations, and exports them. At each size (10, 100, 1,000 shards
already exported) it adds one shard and times the export of it, three times: the export job's
step through Dagster (`lpt_exports`, incremental) and, side by side in the same process, the
code before this change (`lpt/export.py` at BEFORE_REV, read from git), which read every
finished shard and rewrote every file. Prints JSON.

    python -m benchmarks.exports [--sizes 10 100 1000] [--before-up-to 1000] [--images 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, AssetMaterialization, DagsterInstance, instance_for_test
from PIL import Image

from lpt.config import PipelineConfig
from lpt.prompts import ANSWER_INSTRUCTIONS, VLM_SYSTEM
from lpt.records import DpoPair, Label, PairType, SftSample, stable_id
from lpt.tables import DPO_PAIRS, SFT_SAMPLES
from lpt_assets.checks import failed_checks
from lpt_assets.location import EXPORT_JOB, build_definitions
from lpt_assets.partitions import shards
from lpt_resources.storage import ParquetStore

REPO = Path(__file__).resolve().parent.parent
BEFORE_REV = "7eaffe3"  # main before exports grew by shard
# The original method's real outputs: $LPT_REFERENCE_RUN, else ../shared beside the repo.
REFERENCE = (
    Path(os.environ.get("LPT_REFERENCE_RUN") or REPO.parent / "shared" / "fixtures" / "reference-run")
    / "stage2_simple_cot_samples.jsonl"
)
MCQS_PER_IMAGE, SFT_PER_MCQ, PAIRS_PER_MCQ = 4, 4, 3
LABELS = [Label.O, Label.O_O, Label.X_O, Label.X_O]
PAIR_TYPES = [PairType.O_GT_X, PairType.X_O_GT_X_X, PairType.O_GT_O_O]


def reference_texts() -> tuple[list[str], list[str]]:
    """Real stage-2 questions and short CoTs (their lengths are what matters here)."""
    rows = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    questions = ["\n".join([r["question"], "", *r["options_as_presented"]]) for r in rows]
    thinks = [
        o.split("</think>")[0].removeprefix("<think>").strip() for r in rows for o in r["outputs"] if "</think>" in o
    ]
    return questions, thinks


def photos(folder: Path, count: int) -> list[str]:
    """Small JPEGs cut from the bundled sample photos (what the HF export embeds)."""
    import skimage.data

    sources = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.fromarray(sources[index % len(sources)]).rotate(index % 360).resize((192, 144))
        path = folder / f"photo-{index:06d}.jpg"
        image.save(path, quality=85)
        paths.append(str(path))
    return paths


def shard_rows(
    key: str, images: list[str], questions: list[str], thinks: list[str]
) -> tuple[list[SftSample], list[DpoPair]]:
    rng = random.Random(key)
    sft, dpo = [], []
    for image_index, image_path in enumerate(images):
        image_id = f"{key}-img{image_index}"
        for m in range(MCQS_PER_IMAGE):
            mcq_id = stable_id(key, image_index, m)
            prompt = rng.choice(questions) + "\n\n" + ANSWER_INSTRUCTIONS["paren_letter"]

            def response() -> str:
                long = f" Wait, {rng.choice(thinks)}" if rng.random() < 0.7 else ""
                return f"<think>\n{rng.choice(thinks)}{long}\n</think>\n<answer>({rng.choice('ABCD')})</answer>"

            for k in range(SFT_PER_MCQ):
                trace = stable_id(mcq_id, "trace", k)
                sft.append(
                    SftSample(
                        sample_id=stable_id("sft", trace),
                        trace_id=trace,
                        label=LABELS[k],
                        mcq_id=mcq_id,
                        image_id=image_id,
                        cot_id=stable_id(trace, "cot"),
                        long_id=trace if LABELS[k] is not Label.O else None,
                        image_path=image_path,
                        system=VLM_SYSTEM,
                        prompt=prompt,
                        response=response(),
                    )
                )
            for k in range(PAIRS_PER_MCQ):
                dpo.append(
                    DpoPair(
                        pair_id=stable_id(mcq_id, "pair", k),
                        pair_type=PAIR_TYPES[k],
                        mcq_id=mcq_id,
                        image_id=image_id,
                        chosen_id=stable_id(mcq_id, "c", k),
                        rejected_id=stable_id(mcq_id, "r", k),
                        image_path=image_path,
                        system=VLM_SYSTEM,
                        prompt=prompt,
                        chosen=response(),
                        rejected=response(),
                    )
                )
    return sft, dpo


def load_before():
    """`lpt/export.py` as it was at BEFORE_REV, as a module (None outside a git checkout)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_REV}:lpt/export.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "lpt_export_before.py"
    path.write_text(source.replace("from .records import", "from lpt.records import"))
    spec = importlib.util.spec_from_file_location("lpt_export_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def export_before(before, store: ParquetStore, instance: DagsterInstance, root: Path, info: dict) -> float:
    """The export assets' work before this change: every finished shard read, every file written."""
    started = time.perf_counter()
    written = sorted(set(store.partitions(SFT_SAMPLES)) & set(store.partitions(DPO_PAIRS)))
    held_back = failed_checks(instance, written)
    keys = [key for key in written if key not in held_back]
    sft = [row for key in keys for row in store.read(SFT_SAMPLES, key)]
    dpo = [row for key in keys for row in store.read(DPO_PAIRS, key)]
    before.write_llamafactory(sft, dpo, root / "llamafactory")
    before.write_lacot(sft, root / "lacot")
    before.write_provenance(sft, dpo, root / "llamafactory", run_info=info)
    # the second asset read every shard again
    sft = [row for key in keys for row in store.read(SFT_SAMPLES, key)]
    dpo = [row for key in keys for row in store.read(DPO_PAIRS, key)]
    before.write_hf_datasets(sft, dpo, root / "hf", card_context={k: str(v) for k, v in info.items()})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--before-up-to", type=int, default=1000, help="largest size at which to time the old code")
    parser.add_argument("--images", type=int, default=4, help="images per shard")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()

    questions, thinks = reference_texts()
    before = load_before()
    work = Path(tempfile.mkdtemp(prefix="lpt-bench-exports-"))
    config = PipelineConfig.model_validate({"storage": str(work / "data"), "exports": str(work / "exports")})
    store = ParquetStore(base=config.storage)
    defs = build_definitions(config)
    job = defs.resolve_job_def(EXPORT_JOB)
    from lpt_assets.assets.exports import run_info

    info = run_info(config)
    results = []
    (work / "home").mkdir()
    with instance_for_test(temp_dir=str(work / "home")) as instance:
        made = 0

        def add_shards(count: int) -> list[str]:
            nonlocal made
            keys = [f"bench-{made + i:06d}" for i in range(count)]
            instance.add_dynamic_partitions(shards.name, keys)
            for key in keys:
                sft, dpo = shard_rows(key, photos(work / "images" / key, args.images), questions, thinks)
                store.write(SFT_SAMPLES, key, sft)
                store.write(DPO_PAIRS, key, dpo)
                for asset in ("sft_samples", "dpo_pairs"):
                    instance.report_runless_asset_event(AssetMaterialization(asset_key=AssetKey(asset), partition=key))
            made += count
            return keys

        def export_run() -> dict:
            started = time.perf_counter()
            result = job.execute_in_process(instance=instance)
            assert result.success
            run_seconds = time.perf_counter() - started
            event = instance.get_latest_materialization_event(AssetKey("hf_dataset_export"))
            metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            return {
                "run_s": run_seconds,
                "step_s": metadata["seconds"],
                "written": metadata["shards_written"],
                "shards": metadata["shards"],
            }

        for size in sorted(args.sizes):
            add_shards(size - made)
            export_run()  # bring the export up to `size` shards
            new, old = [], []
            for _ in range(args.repeats):
                add_shards(1)
                timing = export_run()
                assert timing["written"] == 1
                new.append(timing)
                if before is not None and size <= args.before_up_to:
                    old.append(export_before(before, store, instance, work / "before", info))
            row = {
                "shards_exported": size,
                "rows_per_shard": MCQS_PER_IMAGE * args.images * (SFT_PER_MCQ + PAIRS_PER_MCQ),
                "new_step_s": round(statistics.median(t["step_s"] for t in new), 3),
                "new_run_s": round(statistics.median(t["run_s"] for t in new), 3),
            }
            if old:
                row["before_s"] = round(statistics.median(old), 3)
                row["before_over_new_step"] = round(row["before_s"] / row["new_step_s"], 1)
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "exports: one new shard after N exported",
                "images_per_shard": args.images,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
