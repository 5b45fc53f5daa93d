"""Parquet storage under the storage root: a local folder, or `s3://bucket/prefix` through
pyarrow's S3 filesystem (endpoint overridable, so any S3-compatible server works).

Layout (D2): `<root>/<org>/<dataset id with . as />/g<generation>/…`; workers write under
`…/_staging/<task>/<attempt>/`, sources under `…/_landing/…`, and a commit points at the files
where they lie (S3 has no atomic rename).
"""

from __future__ import annotations

import decimal
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from django.conf import settings

from apps.datasets.models import Dataset
from apps.orgs.errors import FieldError, ValidationFailed
from sluice_worker import files as worker_files
from sluice_worker.arrow_types import arrow_schema, parse_arrow_type


def storage_root() -> str:
    return str(settings.SLUICE_STORAGE_ROOT).rstrip("/")


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a local path or an s3:// URI, with the platform's S3 settings."""
    return worker_files.filesystem_for(
        uri, settings.SLUICE_AWS_ENDPOINT_URL or None, settings.SLUICE_AWS_REGION
    )


def generation_prefix(dataset: Dataset, generation: int) -> str:
    return prefix_of_generation(dataset.storage_prefix, generation)


def prefix_of_generation(storage_prefix: str, generation: int) -> str:
    """`generation_prefix` from the dataset's `storage_prefix` alone."""
    return f"{storage_root()}/{storage_prefix}/g{generation}"


def landing_prefix(dataset: Dataset) -> str:
    """Where sources' files lie before their commit: the platform's, and a client's own."""
    return f"{generation_prefix(dataset, dataset.live_generation)}/_landing/"


def is_under(uri: str, prefix: str) -> bool:
    """Whether `uri` lies under `prefix`, with no `..` tricks."""
    if uri.startswith("s3://") != prefix.startswith("s3://"):
        return False
    if uri.startswith("s3://"):
        return ".." not in uri.split("/") and uri.startswith(prefix.rstrip("/") + "/")
    path, base = os.path.abspath(uri), os.path.abspath(prefix)
    return path.startswith(base.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class FileFacts:
    path: str
    rows: int
    bytes: int
    schema: pa.Schema


def inspect_file(uri: str) -> FileFacts:
    """Row count, size and schema from the parquet footer (the data is not read)."""
    filesystem, path = filesystem_for(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    with filesystem.open_input_file(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
        schema = metadata.schema.to_arrow_schema()
        rows = metadata.num_rows
    return FileFacts(uri, rows, int(info.size or 0), schema)


def type_name(data_type: pa.DataType) -> str:
    """The config spelling of an Arrow type (round-trips through parse_arrow_type)."""
    if pa.types.is_timestamp(data_type):
        unit, tz = data_type.unit, data_type.tz
        return f"timestamp[{unit}, tz={tz}]" if tz else f"timestamp[{unit}]"
    if pa.types.is_large_string(data_type):
        return "large_string"
    if pa.types.is_list(data_type):
        return f"list<{type_name(data_type.value_type)}>"
    if pa.types.is_decimal(data_type):
        return f"decimal128({data_type.precision}, {data_type.scale})"
    text = str(data_type)
    return {"date32[day]": "date32", "date64[ms]": "date64"}.get(text, text)


def evolve_schema(
    current: dict[str, str], declared: bool, incoming: pa.Schema, where: str
) -> dict[str, str]:
    """The dataset schema after a commit with `incoming` (D2): the first commit fixes an
    undeclared schema; later commits may add nullable columns; anything else names the column."""
    if not current:
        return {field.name: type_name(field.type) for field in incoming}
    expected = arrow_schema(current)
    errors: list[FieldError] = []
    for field in incoming:
        if field.name not in current:
            if declared:
                errors.append(
                    FieldError(
                        f"{where}.{field.name}", "column not in the dataset's declared schema"
                    )
                )
            elif not field.nullable:
                errors.append(FieldError(f"{where}.{field.name}", "a new column must be nullable"))
            continue
        if not field.type.equals(expected.field(field.name).type):
            errors.append(
                FieldError(
                    f"{where}.{field.name}",
                    f"is {type_name(field.type)}; the dataset has {current[field.name]}",
                )
            )
    names = set(incoming.names)
    for name in current:
        if name not in names:
            errors.append(FieldError(f"{where}.{name}", "column missing from the file"))
    if errors:
        raise ValidationFailed("; ".join(f"{e.path}: {e.message}" for e in errors), errors=errors)
    added = {f.name: type_name(f.type) for f in incoming if f.name not in current}
    return {**current, **added}


def cast_rows(rows: list[object], schema: dict[str, str], where: str) -> pa.Table:
    """JSON records as a table of the dataset's schema; a value that cannot be cast is a 400
    naming the row and the column."""
    columns: dict[str, list[object]] = {name: [] for name in schema}
    errors: list[FieldError] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(FieldError(f"{where}[{index}]", "a row must be an object"))
            continue
        for name in sorted(set(row) - set(schema)):
            errors.append(FieldError(f"{where}[{index}].{name}", "column not in the schema"))
        for name in schema:
            columns[name].append(row.get(name))
    if errors:
        raise ValidationFailed(errors[0].message, errors=errors[:50])
    arrays = []
    for name, type_text in schema.items():
        target = parse_arrow_type(type_text)
        try:
            arrays.append(_cast_column(columns[name], target))
        except _CAST_ERRORS:
            index = _first_bad(columns[name], target)
            raise ValidationFailed.field(
                f"{where}[{index}].{name}",
                f"{columns[name][index]!r} cannot be cast to {type_text}",
            ) from None
    return pa.Table.from_arrays(arrays, schema=arrow_schema(schema))


def conform_table(table: pa.Table, schema: dict[str, str], where: str) -> pa.Table:
    """A table sent as Arrow or parquet, its known columns cast to the dataset's types (a safe
    cast: nothing truncated); the schema rules of D2 judge the rest at commit."""
    if not schema:
        return table
    expected = arrow_schema(schema)
    columns = []
    for field in table.schema:
        column = table.column(field.name)
        if field.name in schema and not field.type.equals(expected.field(field.name).type):
            try:
                column = column.cast(expected.field(field.name).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValidationFailed.field(
                    f"{where}.{field.name}",
                    f"{type_name(field.type)} cannot be cast to {schema[field.name]}: {exc}",
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


_CAST_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    ValueError,
    TypeError,
    OverflowError,
    decimal.InvalidOperation,
)


def _cast_column(values: list[object], target: pa.DataType) -> pa.Array:
    """JSON has no dates, times or decimals: they arrive as text (decimals also as numbers)."""
    if pa.types.is_decimal(target):
        values = [
            decimal.Decimal(str(v)) if isinstance(v, str | float) and not isinstance(v, bool) else v
            for v in values
        ]
    elif pa.types.is_temporal(target) and any(isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).cast(target)
    return pa.array(values, type=target)


def _first_bad(values: list[object], target: pa.DataType) -> int:
    for index, value in enumerate(values):
        try:
            _cast_column([value], target)
        except _CAST_ERRORS:
            return index
    return 0


def write_table(table: pa.Table, uri: str) -> FileFacts:
    filesystem, path = filesystem_for(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=filesystem)
    info = filesystem.get_file_info(path)
    return FileFacts(uri, table.num_rows, int(info.size or 0), table.schema)


def read_batches(uris: list[str], batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Record batches of the files in order, never the whole dataset in memory."""
    for uri in uris:
        filesystem, path = filesystem_for(uri)
        with filesystem.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows)
