"""Typed Parquet tables per asset and partition, on a local folder or any fsspec URL.

Writes are atomic: the table goes to a temporary name beside its target and is renamed into
place, so a reader never sees half a file and a crash leaves the previous version intact.
"""

from __future__ import annotations

import enum
import io
import json
import types
import typing
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

import fsspec
import polars as pl
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import BaseModel, PrivateAttr

from lpt.tables import Table

M = TypeVar("M", bound=BaseModel)

_SCALARS: dict[type, pl.DataType] = {
    str: pl.String(),
    int: pl.Int64(),
    float: pl.Float64(),
    bool: pl.Boolean(),
}


def _dtype(annotation: Any) -> pl.DataType:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _dtype(args[0])
    if origin is Literal:
        return _SCALARS[type(args[0])]
    if origin in (list, tuple, Sequence):
        return pl.List(_dtype(args[0]))
    if origin is dict:
        return pl.String()  # free-form maps are stored as JSON text
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return pl.String()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pl.Struct(polars_schema(annotation))
    return _SCALARS[annotation]


def polars_schema(model: type[BaseModel]) -> dict[str, pl.DataType]:
    """The Parquet schema of a record type, so even an empty table is typed."""
    return {name: _dtype(field.annotation) for name, field in model.model_fields.items()}


def _json_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if typing.get_origin(field.annotation) is dict]


def to_frame(rows: Iterable[BaseModel], model: type[BaseModel]) -> pl.DataFrame:
    encoded = _json_fields(model)
    dicts = []
    for row in rows:
        data = row.model_dump(mode="json")
        for name in encoded:
            data[name] = json.dumps(data[name], sort_keys=True)
        dicts.append(data)
    return pl.DataFrame(dicts, schema=polars_schema(model), orient="row" if not dicts else None)


def from_frame(frame: pl.DataFrame, model: type[M]) -> list[M]:
    encoded = _json_fields(model)
    rows = []
    for data in frame.to_dicts():
        for name in encoded:
            data[name] = json.loads(data[name])
        rows.append(model.model_validate(data))
    return rows


def _name(table: Table | str) -> str:
    return table if isinstance(table, str) else table.name


class ParquetStore(ConfigurableResource):
    """Where every asset keeps its tables: `{base}/{table}/{partition}.parquet`. Tables come from
    lpt/tables.py (`store.read(MCQS, key)` is a `list[PresentedMCQ]`); the frame-level methods
    also take a bare name, for tables whose frames carry their own schema."""

    base: str

    _fs: Any = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            self._fs, self._root = fsspec.core.url_to_fs(self.base)
        return self._fs, self._root

    def path(self, table: Table | str, partition: str | None = None) -> str:
        _, root = self._filesystem()
        return f"{root.rstrip('/')}/{_name(table)}/{partition or 'all'}.parquet"

    def exists(self, table: Table | str, partition: str | None = None) -> bool:
        fs, _ = self._filesystem()
        return fs.exists(self.path(table, partition))

    def write(self, table: Table[M], partition: str | None, rows: Iterable[M]) -> str:
        """Rows of the table's record type only: a row of another type is a bug upstream."""
        rows = list(rows)
        wrong = sorted({type(row).__name__ for row in rows if not isinstance(row, table.record)})
        if wrong:
            raise TypeError(f"{table.name} holds {table.record.__name__} rows, not {', '.join(wrong)}")
        return self.write_frame(table, partition, to_frame(rows, table.record))

    def write_frame(self, table: Table | str, partition: str | None, frame: pl.DataFrame) -> str:
        fs, _ = self._filesystem()
        target = self.path(table, partition)
        folder = target.rsplit("/", 1)[0]
        fs.makedirs(folder, exist_ok=True)
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        temporary = f"{folder}/.{uuid.uuid4().hex}.tmp"
        try:  # a full or failing disk leaves no half-written temporary behind either
            with fs.open(temporary, "wb") as handle:
                handle.write(buffer.getvalue())
            fs.mv(temporary, target)
        finally:
            if fs.exists(temporary):
                fs.rm(temporary)
        return target

    def read(self, table: Table[M], partition: str | None) -> list[M]:
        return from_frame(self.read_frame(table, partition), table.record)

    def read_frame(
        self, table: Table | str, partition: str | None = None, columns: Sequence[str] | None = None
    ) -> pl.DataFrame:
        fs, _ = self._filesystem()
        path = self.path(table, partition)
        if not fs.exists(path):
            raise FileNotFoundError(
                f"{_name(table)} has no table for partition {partition!r} at {path}: materialize it first"
            )
        with fs.open(path, "rb") as handle:
            return pl.read_parquet(handle, columns=list(columns) if columns is not None else None)

    def count(self, table: Table | str, partition: str | None = None) -> int:
        """Rows in a table (0 when there is none), from the Parquet footer alone."""
        fs, _ = self._filesystem()
        path = self.path(table, partition)
        if not fs.exists(path):
            return 0
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def partitions(self, table: Table | str) -> list[str]:
        """Partitions that have a table, sorted."""
        fs, _ = self._filesystem()
        folder = f"{self._filesystem()[1].rstrip('/')}/{_name(table)}"
        if not fs.exists(folder):
            return []
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
        return sorted(n[: -len(".parquet")] for n in names if n.endswith(".parquet"))
