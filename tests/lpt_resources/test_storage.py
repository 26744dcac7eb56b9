import polars as pl
import pytest

from lpt.records import Label, Quarantined, Verified
from lpt.tables import MCQS, QUARANTINES, TABLES, VERIFIED
from lpt_resources.storage import ParquetStore, polars_schema
from tests.builders import presented_mcq, verified_row


def test_round_trip_keeps_types_and_nested_records(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    item = presented_mcq()
    row = verified_row(behaviours={"backtracking": 2, "verification": 0})
    store.write(MCQS, "s-00000", [item])
    store.write(VERIFIED, "s-00000", [row])
    assert store.read(MCQS, "s-00000") == [item]
    assert store.read(VERIFIED, "s-00000") == [row]
    assert store.read(VERIFIED, "s-00000")[0].label is Label.X_O


def test_empty_tables_are_typed(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    store.write(VERIFIED, "s-00001", [])
    frame = store.read_frame(VERIFIED, "s-00001")
    assert frame.height == 0
    assert frame.schema == pl.Schema(polars_schema(Verified))


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    store.write(VERIFIED, "s-00000", [verified_row()])
    store.write(VERIFIED, "s-00000", [verified_row(), verified_row(trace_id="t2")])
    assert [p.name for p in (tmp_path / "verified").iterdir()] == ["s-00000.parquet"]
    assert len(store.read(VERIFIED, "s-00000")) == 2
    assert store.partitions(VERIFIED) == ["s-00000"]


def test_fsspec_url_base(tmp_path):
    store = ParquetStore(base=f"file://{tmp_path}/remote")
    store.write(VERIFIED, "k", [verified_row()])
    assert (tmp_path / "remote" / "verified" / "k.parquet").exists()
    assert store.read(VERIFIED, "k") == [verified_row()]


def test_missing_table_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        ParquetStore(base=str(tmp_path)).read_frame(MCQS, "nope")


def test_write_refuses_rows_of_another_record_type(tmp_path):
    store = ParquetStore(base=str(tmp_path))
    with pytest.raises(TypeError, match="verified holds Verified rows, not PresentedMCQ"):
        store.write(VERIFIED, "k", [presented_mcq()])
    assert not store.exists(VERIFIED, "k")


def test_every_table_has_one_name_and_each_quarantine_holds_refusals():
    assert all(name == table.name for name, table in TABLES.items())
    assert all(q.name == f"{t.name}_quarantine" and q.record is Quarantined for t, q in QUARANTINES.items())
    assert all(TABLES[q.name] is q for q in QUARANTINES.values())
