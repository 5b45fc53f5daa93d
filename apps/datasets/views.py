"""Read API for datasets (DESIGN.md §6): the registry, commits, and the data itself, streamed
in batches so no request ever loads a whole dataset into memory."""

from __future__ import annotations

import csv
import decimal
import io
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.db.models import Count, Sum
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.datasets import pg
from apps.datasets.models import Commit, Dataset
from apps.datasets.ranges import canonical_range
from apps.datasets.services import not_superseded
from apps.datasets.storage import landing_prefix, read_batches
from apps.orgs.api import paginate, paginated, request_org
from apps.orgs.errors import NotFound, ValidationFailed
from sluice_worker.arrow_types import arrow_schema

MAX_JSON_ROWS = 10_000


class DatasetOutput(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset_id")
    producer = serializers.JSONField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    commits = serializers.IntegerField(source="commit_count")
    landing_prefix = serializers.SerializerMethodField(
        help_text="Where a source's client may write parquet files to name in an event's `files`."
    )

    class Meta:
        model = Dataset
        fields = [
            "dataset",
            "backend",
            "producer",
            "live_generation",
            "schema",
            "range_type",
            "update_strategy",
            "unique_key",
            "rows",
            "bytes",
            "commits",
            "landing_prefix",
            "updated_at",
        ]

    def get_landing_prefix(self, dataset: Dataset) -> str:
        return landing_prefix(dataset)


class CommitOutput(serializers.ModelSerializer):
    version = serializers.CharField()
    producer_task = serializers.UUIDField(source="producer_task_id", allow_null=True)

    class Meta:
        model = Commit
        fields = [
            "version",
            "generation",
            "seq",
            "range_start",
            "range_end",
            "rows",
            "bytes",
            "files",
            "producer_dag",
            "producer_node",
            "producer_task",
            "created_at",
        ]


def _sized(dataset: Dataset) -> Dataset:
    """With the rows, bytes and commits of its live generation."""
    totals = Commit.objects.filter(dataset=dataset, generation=dataset.live_generation).aggregate(
        rows=Sum("rows"), bytes=Sum("bytes"), commits=Count("id")
    )
    dataset.rows = totals["rows"] or 0  # type: ignore[attr-defined]
    dataset.bytes = totals["bytes"] or 0  # type: ignore[attr-defined]
    dataset.commit_count = totals["commits"]  # type: ignore[attr-defined]
    return dataset


def _dataset(request: Request, dataset_id: str) -> Dataset:
    org = request_org(request)
    dataset = (
        Dataset.objects.for_user(request.user)
        .for_org(org)
        .filter(dataset_id=dataset_id.lower())
        .first()
    )
    if dataset is None:
        raise NotFound(f"No dataset {dataset_id!r}.")
    return dataset


class DatasetsView(APIView):
    @extend_schema(responses=paginated(DatasetOutput), operation_id="datasets_list")
    def get(self, request: Request) -> Response:
        org = request_org(request)
        datasets = Dataset.objects.for_user(request.user).for_org(org)
        return paginate(self, request, datasets, _SizedDatasetOutput, "dataset_id")


class _SizedDatasetOutput(DatasetOutput):
    def to_representation(self, instance: Dataset) -> Any:
        return super().to_representation(_sized(instance))


class DatasetDetailView(APIView):
    @extend_schema(responses=DatasetOutput)
    def get(self, request: Request, dataset_id: str) -> Response:
        return Response(_SizedDatasetOutput(_dataset(request, dataset_id)).data)


class DatasetCommitsView(APIView):
    @extend_schema(
        responses=paginated(CommitOutput),
        operation_id="dataset_commits_list",
        parameters=[OpenApiParameter("generation", int)],
    )
    def get(self, request: Request, dataset_id: str) -> Response:
        dataset = _dataset(request, dataset_id)
        generation = request.query_params.get("generation") or dataset.live_generation
        commits = Commit.objects.filter(dataset=dataset, generation=generation)
        return paginate(self, request, commits, CommitOutput, "seq")


def _selected_commits(dataset: Dataset, params: Any) -> list[Commit]:
    """The commits a read covers: the live generation (or a pinned `version` "g.seq", which
    reads that generation up to that seq), overlapping [range_start, range_end) if given."""
    generation, last_seq = dataset.live_generation, None
    version = params.get("version")
    if version:
        try:
            generation_text, seq_text = version.split(".")
            generation, last_seq = int(generation_text), int(seq_text)
        except ValueError:
            raise ValidationFailed.field(
                "version", "must be '<generation>.<seq>', e.g. 1.42"
            ) from None
    commits = Commit.objects.filter(dataset=dataset, generation=generation).order_by("seq")
    if last_seq is not None:
        if not commits.filter(seq=last_seq).exists():
            raise NotFound(f"{dataset.dataset_id} has no version {version}.")
        commits = commits.filter(seq__lte=last_seq)
    selected = list(commits)
    if dataset.update_strategy == "replace":
        selected = not_superseded(dataset, selected)
    if params.get("range_start") is not None or params.get("range_end") is not None:
        start, end = canonical_range(
            dataset.range_type,
            _typed(dataset, params, "range_start"),
            _typed(dataset, params, "range_end"),
        )
        selected = [c for c in selected if _overlaps(dataset, c, start, end)]
    return selected


def _typed(dataset: Dataset, params: Any, name: str) -> object:
    value = params.get(name)
    return (
        int(value)
        if dataset.range_type == "int" and value is not None and value.lstrip("-").isdigit()
        else value
    )


def _overlaps(dataset: Dataset, commit: Commit, start: str, end: str) -> bool:
    if not commit.range_start:
        return True  # a commit without a range belongs to every read
    if dataset.range_type == "int":
        return int(commit.range_start) < int(end) and int(start) < int(commit.range_end)
    return commit.range_start < end and start < commit.range_end


def _latest_per_key(commits: list[Commit], key: list[str]) -> Iterator[pa.RecordBatch]:
    """`append` with a `unique_key` (D10): one row per key, the latest commit winning (and
    within a commit, the last row). Newest commits first; only the keys seen are held in
    memory, one commit's rows at a time."""
    seen: set[tuple[object, ...]] = set()
    for commit in reversed(commits):
        files = [f["path"] for f in commit.files]
        if not files:
            continue
        table = pa.Table.from_batches(list(read_batches(files)))
        keys = list(zip(*(table.column(c).to_pylist() for c in key), strict=True))
        keep = [False] * len(keys)
        for index in range(len(keys) - 1, -1, -1):
            if keys[index] not in seen:
                seen.add(keys[index])
                keep[index] = True
        kept = table.filter(pa.array(keep, pa.bool_()))
        yield from kept.to_batches()


def _files(commits: list[Commit]) -> list[str]:
    return [f["path"] for c in commits for f in c.files]


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, as a float would not be
    return value.isoformat() if hasattr(value, "isoformat") else value


def _limited(
    batches: Iterator[pa.RecordBatch], offset: int, limit: int
) -> Iterator[pa.RecordBatch]:
    skipped, sent = 0, 0
    for batch in batches:
        if skipped + batch.num_rows <= offset:
            skipped += batch.num_rows
            continue
        batch = batch.slice(max(0, offset - skipped))
        skipped = offset
        if sent + batch.num_rows > limit:
            batch = batch.slice(0, limit - sent)
        sent += batch.num_rows
        if batch.num_rows:
            yield batch
        if sent >= limit:
            return


def _csv_stream(batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    header_written = False
    for batch in batches:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if not header_written:
            writer.writerow(batch.schema.names)
            header_written = True
        for row in batch.to_pylist():
            writer.writerow([_json_value(v) for v in row.values()])
        yield buffer.getvalue().encode()


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are collected and handed out chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def _arrow_stream(
    batches: Iterator[pa.RecordBatch], parquet: bool, schema: pa.Schema
) -> Iterator[bytes]:
    """Parquet or Arrow IPC, one chunk per batch; an empty read is a valid empty file."""
    sink = _Sink()
    writer: Any = None

    def open_writer(schema: pa.Schema) -> Any:
        return pq.ParquetWriter(sink, schema) if parquet else pa.ipc.new_stream(sink, schema)

    for batch in batches:
        if writer is None:
            writer = open_writer(batch.schema)
        if parquet:
            writer.write_table(pa.Table.from_batches([batch]))
        else:
            writer.write_batch(batch)
        yield sink.drain()
    if writer is None:
        writer = open_writer(schema)
    writer.close()
    yield sink.drain()


class DatasetDataView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=["json", "csv", "parquet", "arrow"]),
            OpenApiParameter("version", str, description="Pin a version: '<generation>.<seq>'."),
            OpenApiParameter("range_start", str),
            OpenApiParameter("range_end", str),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, dataset_id: str) -> Any:
        dataset = _dataset(request, dataset_id)
        params = request.query_params
        fmt = params.get("format", "json")
        if fmt not in {"json", "csv", "parquet", "arrow"}:
            raise ValidationFailed.field("format", "one of json, csv, parquet, arrow")
        limit = _int_param(params, "limit", MAX_JSON_ROWS if fmt == "json" else 10**12)
        offset = _int_param(params, "offset", 0)
        if fmt == "json" and limit > MAX_JSON_ROWS:
            raise ValidationFailed.field(
                "limit", f"at most {MAX_JSON_ROWS} rows as JSON; use format=parquet or arrow"
            )
        commits = _selected_commits(dataset, params)
        if dataset.backend == "postgres":
            # Rows carry the seq of the commit that last wrote them; the table already holds
            # one row per unique_key and none of the superseded commits.
            filtered = any(
                params.get(p) is not None for p in ("version", "range_start", "range_end")
            )
            paged = fmt == "json" or "limit" in params or "offset" in params
            batches: Iterator[pa.RecordBatch] = pg.read_batches(
                dataset,
                int(commits[0].generation) if commits else dataset.live_generation,
                [c.seq for c in commits] if filtered else None,
                offset if paged else 0,
                limit if paged else None,
            )
        else:
            if dataset.update_strategy == "append" and dataset.unique_key:
                source: Iterator[pa.RecordBatch] = _latest_per_key(
                    commits, list(dataset.unique_key)
                )
            else:
                source = read_batches(_files(commits))
            batches = _limited(source, offset, limit)
        if fmt == "json":
            rows = [
                {k: _json_value(v) for k, v in row.items()}
                for batch in batches
                for row in batch.to_pylist()
            ]
            next_url = None
            if len(rows) == limit:
                query = params.copy()
                query["offset"] = str(offset + limit)
                next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
            return Response({"results": rows, "next": next_url})
        if fmt == "csv":
            response = StreamingHttpResponse(_csv_stream(batches), content_type="text/csv")
        else:
            media = (
                "application/vnd.apache.parquet"
                if fmt == "parquet"
                else "application/vnd.apache.arrow.stream"
            )
            schema = arrow_schema(dataset.schema) if dataset.schema else pa.schema([])
            response = StreamingHttpResponse(
                _arrow_stream(batches, fmt == "parquet", schema), content_type=media
            )
        name = f"{dataset.dataset_id}.{'arrows' if fmt == 'arrow' else fmt}"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


def _int_param(params: Any, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise ValidationFailed.field(name, "must be a whole number")
    return int(value)
