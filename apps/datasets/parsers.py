"""Request bodies that carry a table: Arrow IPC (stream or file) and parquet."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rest_framework.parsers import BaseParser

from apps.orgs.errors import ValidationFailed

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"


class _TableParser(BaseParser):
    kind = ""

    def read(self, data: bytes) -> pa.Table:
        raise TypeError

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = stream.read() if stream is not None else b""
        if not data:
            raise ValidationFailed.field("body", f"empty; expected {self.kind}")
        try:
            return self.read(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise ValidationFailed.field("body", f"not readable as {self.kind}: {exc}") from None


class ArrowStreamParser(_TableParser):
    media_type = ARROW_STREAM
    kind = "an Arrow IPC stream"

    def read(self, data: bytes) -> pa.Table:
        return pa.ipc.open_stream(data).read_all()


class ArrowFileParser(_TableParser):
    media_type = ARROW_FILE
    kind = "an Arrow IPC file"

    def read(self, data: bytes) -> pa.Table:
        return pa.ipc.open_file(data).read_all()


class ParquetParser(_TableParser):
    media_type = PARQUET
    kind = "a parquet file"

    def read(self, data: bytes) -> pa.Table:
        return pq.read_table(io.BytesIO(data))
