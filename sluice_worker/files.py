"""Where datasets live: a local folder or `s3://bucket/prefix`, through pyarrow's filesystems.
Shared by the platform (settings) and by workers (environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def filesystem_for(
    uri: str, endpoint: str | None = None, region: str | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a local path or an s3:// URI. Without explicit
    arguments the S3 endpoint and region come from the environment (SLUICE_AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION); credentials from the AWS chain."""
    if not uri.startswith("s3://"):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    endpoint = (
        endpoint or os.environ.get("SLUICE_AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), uri.removeprefix("s3://")
