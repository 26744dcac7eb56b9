"""Stage 2 through the real multimodal path: a tiny Qwen2.5-VL built from a config sees the image."""

from dagster import DagsterInstance, materialize

from lpt.config import PipelineConfig
from lpt.prompts import present
from lpt.records import MCQ, Caption
from lpt.tables import CAPTIONS, MCQS, SIMPLE_COTS
from lpt_assets.assets.generate import build_engine_stage_assets
from lpt_resources.captions.sources import parse_spec, read_items
from lpt_resources.captions.validate import check_shard
from lpt_resources.engines.resource import EngineResource, TransformersEngineResource
from lpt_resources.storage import ParquetStore

SHARD = "sample-train-00000"


def _seed_tables(store: ParquetStore, image_root: str) -> Caption:
    items = read_items(parse_spec("sample?limit=1"), image_root)
    captions, _ = check_shard(items)
    store.write(CAPTIONS, SHARD, captions)
    caption = captions[0]
    mcq = MCQ(
        mcq_id="mcq-1",
        image_id=caption.image_id,
        question="Which colour dominates the picture?",
        options=["Red", "Green", "Blue", "Grey"],
        answer="Red",
        reasoning_type="recognition",
    )
    store.write(MCQS, SHARD, [present(mcq)])
    return caption


def _run_stage2(tmp_path, vlm: EngineResource, stand_in: bool):
    config = PipelineConfig.model_validate(
        {
            "storage": str(tmp_path / "data"),
            "think": {"caption_stand_in": stand_in, "image_max_side": 128, "sampling": {"n": 2, "max_tokens": 8}},
        }
    )
    store = ParquetStore(base=config.storage)
    caption = _seed_tables(store, f"{config.storage}/images")
    simple_cots = next(a for a in build_engine_stage_assets(config) if a.key.to_user_string() == "simple_cots")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("shards", [SHARD])
    result = materialize(
        [simple_cots],
        partition_key=SHARD,
        instance=instance,
        resources={"store": store, "vlm_engine": vlm},
        raise_on_error=False,
    )
    return result, store, caption


def test_vlm_reads_the_image(tmp_path, tiny_qwen2_5_vl_path):
    result, store, caption = _run_stage2(
        tmp_path, TransformersEngineResource(model=str(tiny_qwen2_5_vl_path)), stand_in=False
    )
    assert result.success
    cots = store.read(SIMPLE_COTS, SHARD)
    assert len(cots) == 2
    assert all(not c.stand_in and c.image_id == caption.image_id for c in cots)
    # the image tokens count toward the prompt: far more than the text alone
    assert all(c.prompt_tokens > 64 for c in cots)
    [materialization] = [
        m for m in result.asset_materializations_for_node("simple_cots") if m.asset_key.path == ["simple_cots"]
    ]
    metadata = materialization.metadata
    assert metadata["perception"].value == "image"


def test_text_model_refuses_images_unless_stand_in_is_on(tmp_path, tiny_qwen2_path):
    result, _, _ = _run_stage2(tmp_path, TransformersEngineResource(model=str(tiny_qwen2_path)), stand_in=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "think.caption_stand_in = true" in failure.event_specific_data.error.to_string()
