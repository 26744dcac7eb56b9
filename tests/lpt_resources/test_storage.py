import polars as pl
import pytest

from lpt.records import Label, PresentedMCQ, Verified
from lpt_resources.storage import ParquetStore, polars_schema
from tests.builders import presented_mcq, verified_row


def test_round_trip_keeps_types_and_nested_records(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    item = presented_mcq()
    row = verified_row(behaviours={"backtracking": 2, "verification": 0})
    store.write("mcqs", "s-00000", [item], PresentedMCQ)
    store.write("verified", "s-00000", [row], Verified)
    assert store.read("mcqs", "s-00000", PresentedMCQ) == [item]
    assert store.read("verified", "s-00000", Verified) == [row]
    assert store.read("verified", "s-00000", Verified)[0].label is Label.X_O


def test_empty_tables_are_typed(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    store.write("verified", "s-00001", [], Verified)
    frame = store.read_frame("verified", "s-00001")
    assert frame.height == 0
    assert frame.schema == pl.Schema(polars_schema(Verified))


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    store.write("verified", "s-00000", [verified_row()], Verified)
    store.write("verified", "s-00000", [verified_row(), verified_row(trace_id="t2")], Verified)
    assert [p.name for p in (tmp_path / "verified").iterdir()] == ["s-00000.parquet"]
    assert len(store.read("verified", "s-00000", Verified)) == 2
    assert store.partitions("verified") == ["s-00000"]


def test_fsspec_url_base(tmp_path):
    store = ParquetStore(base=f"file://{tmp_path}/remote")
    store.write("verified", "k", [verified_row()], Verified)
    assert (tmp_path / "remote" / "verified" / "k.parquet").exists()
    assert store.read("verified", "k", Verified) == [verified_row()]


def test_missing_table_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        ParquetStore(base=str(tmp_path)).read_frame("mcqs", "nope")
