import json

import datasets
import numpy as np
import pytest
from PIL import Image

from lpt_resources.captions.sources import parse_spec, read_items, shard
from lpt_resources.captions.validate import check_shard

DESCRIPTION = "A red brick wall with a small green door on the left and ivy above it."


def _photo(path, size=(64, 48), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_bundled_sample_is_complete_and_valid(tmp_path):
    spec = parse_spec("sample")
    items = read_items(spec, str(tmp_path / "images"))
    assert len(items) >= 12
    assert [i.image_id for i in items] == sorted(i.image_id for i in items)
    captions, quarantined = check_shard(items)
    assert quarantined == []
    for caption in captions:
        assert 80 <= len(caption.description.split()) <= 200
        assert min(caption.width, caption.height) >= 28
    shards = shard(spec, items)
    assert list(shards) == [f"sample-train-{i:05d}" for i in range(len(shards))]
    assert sum(len(v) for v in shards.values()) == len(items)


def test_shards_are_deterministic(tmp_path):
    spec = parse_spec("sample?shard_size=4")
    first = shard(spec, read_items(spec, str(tmp_path / "a")))
    second = shard(spec, read_items(spec, str(tmp_path / "b")))
    assert {k: [i.image_id for i in v] for k, v in first.items()} == {
        k: [i.image_id for i in v] for k, v in second.items()
    }
    assert all(len(v) <= 4 for v in first.values())


def test_docci_layout_and_paper_selection(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for index in range(10):
        _photo(tmp_path / "images" / f"train_{index:05d}.jpg")
        rows.append(
            {
                "example_id": f"train_{index:05d}",
                "split": "train",
                "image_file": f"train_{index:05d}.jpg",
                "description": DESCRIPTION,
            }
        )
    rows.append({"example_id": "test_00000", "split": "test", "image_file": "x.jpg", "description": DESCRIPTION})
    (tmp_path / "docci_descriptions.jsonlines").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = parse_spec(f"docci:{tmp_path}?split=train&limit=4&seed=3")
    items = read_items(spec, str(tmp_path / "cache"))
    assert len(items) == 4 and all(i.split == "train" for i in items)
    assert items == read_items(spec, str(tmp_path / "cache"))  # seeded: same choice every time
    assert list(shard(spec, items)) == ["docci-train-00000"]
    captions, quarantined = check_shard(items)
    assert len(captions) == 4 and not quarantined


def test_manifest_bad_rows_are_quarantined_with_reasons(tmp_path):
    good = _photo(tmp_path / "good.png")
    _photo(tmp_path / "tiny.png", size=(8, 8))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    lines = [
        {"image": "good.png", "description": DESCRIPTION, "image_id": "good"},
        {"image": "good.png", "description": DESCRIPTION, "image_id": "good"},
        {"image": "missing.png", "description": DESCRIPTION},
        {"image": "empty.png", "description": DESCRIPTION},
        {"image": "corrupt.png", "description": DESCRIPTION},
        {"image": "tiny.png", "description": DESCRIPTION},
        {"image": "good.png", "description": "   ", "image_id": "blank"},
        {"image": "good.png"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    (tmp_path / "batch.jsonl").write_text(text)
    items = read_items(parse_spec(f"manifest:{tmp_path}/batch.jsonl"), str(tmp_path / "cache"))
    captions, quarantined = check_shard(items)
    assert [c.image_id for c in captions] == ["good"]
    reasons = sorted(q.reason for q in quarantined)
    assert reasons == sorted(
        [
            "duplicate_image_id",
            "missing_image",
            "empty_image",
            "corrupt_image",
            "tiny_image",
            "blank_description",
            "unreadable_row",
            "unreadable_row",
        ]
    )
    assert all(q.detail for q in quarantined)


def test_truncated_image_is_caught(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    photo.save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "cut.jpg", "description": DESCRIPTION}) + "\n")
    _, quarantined = check_shard(read_items(parse_spec(f"manifest:{tmp_path}/m.jsonl"), str(tmp_path)))
    assert [q.reason for q in quarantined] == ["truncated_image"]


def test_hf_dataset_with_image_column(tmp_path):
    images = [Image.new("RGB", (40, 40), (i * 40, 0, 0)) for i in range(3)]
    dataset = datasets.Dataset.from_dict(
        {"img": images, "caption": [DESCRIPTION] * 3, "key": ["a", "b", "c"]},
        features=datasets.Features(
            {"img": datasets.Image(), "caption": datasets.Value("string"), "key": datasets.Value("string")}
        ),
    )
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "ds"))
    spec = parse_spec(f"hf:{tmp_path}/ds?split=train&image=img&description=caption&id=key&name=mine")
    items = read_items(spec, str(tmp_path / "images"))
    assert [i.image_id for i in items] == ["a", "b", "c"]
    captions, quarantined = check_shard(items)
    assert len(captions) == 3 and not quarantined
    assert list(shard(spec, items)) == ["mine-train-00000"]


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown caption source"):
        parse_spec("ftp:whatever")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "sample?shardsize=3",
            "sample source: unknown option 'shardsize'; did you mean 'shard_size'? accepted options: limit, name, seed, shard_size, split",
        ),
        (
            "sample?colour=red",
            "sample source: unknown option 'colour'; accepted options: limit, name, seed, shard_size, split",
        ),
        (
            "sample?shard_size=0",
            "sample source: shard_size='0' is not valid; shard_size takes a whole number of images >= 1",
        ),
        (
            "sample?shard_size=abc",
            "sample source: shard_size='abc' is not valid; shard_size takes a whole number of images >= 1",
        ),
        ("sample?limit=-1", "sample source: limit='-1' is not valid; limit takes a whole number of images >= 1"),
        ("sample?limit", "sample source: limit='' is not valid; limit takes a whole number of images >= 1"),
        ("sample?limit=2&limit=3", "sample source: option 'limit' is given twice"),
        (
            "manifest:m.jsonl?allow_urls=maybe",
            "manifest source: allow_urls='maybe' is not valid; allow_urls takes true or false",
        ),
        (
            "docci:/d?root=/x",
            "docci source: unknown option 'root'; accepted options: limit, name, seed, shard_size, split",
        ),
        (
            "hf:org/name?name=--",
            "hf source: name='--' is not valid; name takes a name with at least one letter or digit",
        ),
    ],
)
def test_a_spec_is_checked_against_its_sources_options(spec, expected):
    from lpt_resources.captions.sources import SpecError

    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert str(raised.value) == expected


def test_every_documented_option_is_accepted():
    assert (
        parse_spec(
            "manifest:m.jsonl?root=/r&allow_urls=true&allow_symlinks=no&image=i&description=d&id=k&split=s&name=n&shard_size=2&limit=3&seed=0"
        ).options["limit"]
        == "3"
    )
    assert parse_spec("hf:org/name?split=train&image=img&description=caption&id=key&name=mine").name == "mine"


def test_a_source_that_is_not_there_is_named_before_reading(tmp_path):
    from lpt_resources.captions.sources import SpecError

    with pytest.raises(SpecError, match=f"manifest source: {tmp_path}/none.jsonl does not exist"):
        read_items(parse_spec(f"manifest:{tmp_path}/none.jsonl"), str(tmp_path))
    with pytest.raises(SpecError, match=f"docci source: {tmp_path}/docci_descriptions.jsonlines does not exist"):
        read_items(parse_spec(f"docci:{tmp_path}"), str(tmp_path))
