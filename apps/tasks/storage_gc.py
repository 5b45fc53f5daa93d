"""Garbage collection of stale staging and landing files (DESIGN.md D7: a crashed attempt
leaves nothing visible, and stale staging is garbage-collected).

A file under `<dataset>/g<n>/_staging/` or `<dataset>/g<n>/_landing/` is deleted when
- no commit names it,
- for staging, the attempt that wrote it (`_staging/<task>/<attempt>/…`) is no longer live:
  an attempt that has ended, or whose task is no longer running it, can never commit again
  (task-complete and checkpoints refuse it), and
- it is older than the grace period: a source's landing file is written before the commit
  that names it, and clients may write landing files before posting the event that names them.

Attempts are checked before commits are read, so a commit that an attempt records while the
sweep runs is seen before that attempt counts as over. Works on a local root and on S3 alike,
through pyarrow's filesystem API.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.fs as pafs
from django.conf import settings
from django.utils import timezone

from apps.datasets.models import Commit, Dataset
from apps.datasets.storage import filesystem_for, storage_root
from apps.orgs.models import Org
from apps.tasks.models import Attempt, TaskState

logger = logging.getLogger(__name__)

AREAS = ("_staging", "_landing")
GENERATION_DIR = re.compile(r"g[0-9]+")
DEFAULT_LIMIT = 10_000
LOOKUP_CHUNK = 500

AttemptKey = tuple[uuid.UUID, int]


@dataclass
class GcResult:
    files: int = 0
    bytes: int = 0

    def add(self, other: GcResult) -> None:
        self.files += other.files
        self.bytes += other.bytes


@dataclass(frozen=True)
class _File:
    uri: str  # as commits name it
    path: str  # inside its filesystem
    size: int
    stale: bool  # older than the grace period
    attempt: AttemptKey | None  # the staging attempt that wrote it
    attempt_dir: str | None


def collect_garbage(
    *,
    org: Org | None = None,
    grace_s: float | None = None,
    now: dt.datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> GcResult:
    """Delete stale staging and landing files of every dataset (of `org`), at most `limit`
    files in one call; returns how many files and bytes were freed."""
    grace = float(settings.SLUICE_GC_GRACE_S if grace_s is None else grace_s)
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=grace)
    datasets = Dataset.objects.for_org(org) if org is not None else Dataset.objects.all()
    result = GcResult()
    for dataset in datasets.order_by("pk").iterator(chunk_size=200):
        if result.files >= limit:
            break
        try:
            result.add(collect_dataset(dataset, cutoff, limit - result.files))
        except OSError:  # one unreachable prefix must not stop the others
            logger.exception("gc: could not collect %s", dataset.dataset_id)
    return result


def collect_dataset(dataset: Dataset, cutoff: dt.datetime, limit: int) -> GcResult:
    base_uri = f"{storage_root()}/{dataset.storage_prefix}"
    filesystem, base = filesystem_for(base_uri)
    listed = list(_listed_files(filesystem, base_uri, base, cutoff))
    candidates = [f for f in listed if f.stale]
    if not candidates:
        return GcResult()
    live = _live_attempts({f.attempt for f in candidates if f.attempt is not None})
    candidates = [f for f in candidates if f.attempt not in live]
    referenced = _referenced(dataset, {f.uri for f in candidates})
    doomed = [f for f in candidates if f.uri not in referenced][:limit]
    result = GcResult()
    deleted: set[str] = set()
    for file in doomed:
        try:
            filesystem.delete_file(file.path)
        except OSError as exc:  # gone already (e.g. a repeated ingest removed it), or denied
            logger.warning("gc: could not delete %s: %s", file.uri, exc)
            continue
        deleted.add(file.path)
        result.files += 1
        result.bytes += file.size
    _remove_emptied_attempt_dirs(filesystem, listed, deleted)
    if result.files:
        logger.info(
            "gc: %s: deleted %d files, %d bytes", dataset.dataset_id, result.files, result.bytes
        )
    return result


def _normal(uri: str) -> str:
    return uri if uri.startswith("s3://") else os.path.abspath(uri)


def _listed_files(
    filesystem: pafs.FileSystem, base_uri: str, base: str, cutoff: dt.datetime
) -> Iterable[_File]:
    """Every file under the staging and landing areas of the dataset's generations.

    Generation folders are listed one level deep: a dataset `a.b.c` lives inside `a.b`'s
    folder, and must not be taken for part of it."""
    cutoff_ns = int(cutoff.timestamp() * 1_000_000_000)
    top = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    for generation in top:
        if generation.type != pafs.FileType.Directory or not GENERATION_DIR.fullmatch(
            generation.base_name
        ):
            continue
        for area in AREAS:
            area_path = f"{base}/{generation.base_name}/{area}"
            selector = pafs.FileSelector(area_path, allow_not_found=True, recursive=True)
            for info in filesystem.get_file_info(selector):
                if info.type != pafs.FileType.File:
                    continue
                relative = info.path[len(area_path) :].lstrip("/")
                attempt, attempt_dir = None, None
                if area == "_staging":
                    attempt = _attempt_of(relative)
                    if attempt is not None:
                        attempt_dir = "/".join([area_path, *relative.split("/")[:2]])
                yield _File(
                    uri=_normal(f"{base_uri}/{info.path[len(base) :].lstrip('/')}"),
                    path=info.path,
                    size=int(info.size or 0),
                    # A file whose age is unknown is kept.
                    stale=info.mtime_ns is not None and info.mtime_ns < cutoff_ns,
                    attempt=attempt,
                    attempt_dir=attempt_dir,
                )


def _attempt_of(relative: str) -> AttemptKey | None:
    """`<task>/<attempt>/…` -> (task id, attempt number); None for anything else, which no
    attempt may commit (completion accepts only files under the attempt's own prefix)."""
    parts = relative.split("/")
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    try:
        return uuid.UUID(parts[0]), int(parts[1])
    except ValueError:
        return None


def _live_attempts(keys: set[AttemptKey]) -> set[AttemptKey]:
    """The attempts among `keys` that may still commit: not ended, their task running."""
    task_ids = sorted({task_id for task_id, _ in keys})
    live: set[AttemptKey] = set()
    for start in range(0, len(task_ids), LOOKUP_CHUNK):
        rows = Attempt.objects.filter(
            task_id__in=task_ids[start : start + LOOKUP_CHUNK],
            outcome="",
            task__state=TaskState.RUNNING,
        ).values_list("task_id", "number")
        live.update((task_id, number) for task_id, number in rows)
    return live


def _referenced(dataset: Dataset, uris: set[str]) -> set[str]:
    """The `uris` that a commit of the dataset names; the commits are read in chunks and only
    the matches are held."""
    if not uris:
        return set()
    found: set[str] = set()
    commits = Commit.objects.filter(dataset=dataset).values_list("files", flat=True)
    for files in commits.iterator(chunk_size=1000):
        for entry in files or []:
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str) and (normal := _normal(path)) in uris:
                found.add(normal)
    return found


def _remove_emptied_attempt_dirs(
    filesystem: pafs.FileSystem, listed: list[_File], deleted: set[str]
) -> None:
    """Remove the folders of ended attempts whose every file was just deleted. A task's own
    folder stays: a retry may be writing its next attempt there."""
    emptied = {f.attempt_dir for f in listed if f.path in deleted and f.attempt_dir}
    kept = {f.attempt_dir for f in listed if f.path not in deleted and f.attempt_dir}
    for path in sorted(emptied - kept):
        try:
            filesystem.delete_dir(path)
        except OSError as exc:
            logger.warning("gc: could not remove %s: %s", path, exc)
