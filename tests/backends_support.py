"""The two backend setups of the worker-level tests (serving and ingest): the local pair in
a tmp folder, or S3 on moto + Redis, each test with its own bucket and hash tag; and the
clean-up of what such a test wrote (:class:`Backend` and its helpers, shared by
``serve_support`` and ``upload_support``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import coredis
from aiobotocore.session import get_session

#: The six keys the configuration requires with the default s3 + redis backends (docs/configuration.md).
REQUIRED_KEYS = (
    "ZE_WORKER_JWT_SECRET",
    "ZE_WORKER_S3_ENDPOINT",
    "ZE_WORKER_S3_ACCESS_KEY_ID",
    "ZE_WORKER_S3_SECRET_ACCESS_KEY",
    "ZE_WORKER_S3_BUCKET",
    "ZE_WORKER_REDIS_HOST",
)

ACCESS_KEY = "AKIAEXAMPLEWORKERKEY"
SECRET_KEY = "s3-secret-key-worker-9876543210zyxwvu"


def local_env(data_dir: Path) -> dict[str, str]:
    """Environment of a worker on the local backends in ``data_dir``."""
    return {"ZE_WORKER_STORAGE_BACKEND": "local", "ZE_WORKER_KV_BACKEND": "local", "ZE_WORKER_DATA_DIR": str(data_dir)}


def s3_redis_env(
    data_dir: Path, s3_endpoint: str, redis_addr: tuple[str, int], bucket_prefix: str, **extra: str
) -> tuple[dict[str, str], str, str]:
    """(environment, bucket, hash tag) of a worker on S3 + Redis, unique to one test."""
    unique = uuid.uuid4().hex[:12]
    tag = f"{{ze-test-{unique}}}"
    bucket = f"{bucket_prefix}-{unique}"
    env = {
        "ZE_WORKER_STORAGE_BACKEND": "s3", "ZE_WORKER_KV_BACKEND": "redis",
        "ZE_WORKER_DATA_DIR": str(data_dir),
        "ZE_WORKER_S3_ENDPOINT": s3_endpoint, "ZE_WORKER_S3_BUCKET": bucket,
        "ZE_WORKER_S3_ACCESS_KEY_ID": ACCESS_KEY, "ZE_WORKER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "ZE_WORKER_REDIS_HOST": redis_addr[0], "ZE_WORKER_REDIS_PORT": str(redis_addr[1]),
        "ZE_WORKER_REDIS_PREFIX_ENVS": f"{tag}:envs:", "ZE_WORKER_REDIS_PREFIX_SNAPSHOTS": f"{tag}:snapshots:",
        **extra,
    }
    return env, bucket, tag


def s3_client(endpoint: str) -> Any:
    return get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )


async def empty_bucket(s3: Any, bucket: str) -> None:
    """Abort pending multipart uploads, delete every object, then the bucket."""
    for upload in (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", []):
        await s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            await s3.delete_object(Bucket=bucket, Key=item["Key"])
    await s3.delete_bucket(Bucket=bucket)


async def delete_tagged_keys(redis_addr: tuple[str, int], tag: str) -> None:
    """Delete every Redis key of the test's hash tag."""
    async with coredis.Redis(host=redis_addr[0], port=redis_addr[1]) as client:
        keys = [k async for k in client.scan_iter(match=f"{tag}*")]
        if keys:
            await client.delete(keys)


@attrs.define
class Backend:
    """Where a test worker keeps its data (``s3``: an open client on the bucket, set by
    :func:`s3_session`)."""

    name: str
    env: Mapping[str, str]
    data_dir: Path
    s3_endpoint: str | None = None
    bucket: str | None = None
    redis: tuple[str, int] | None = None
    tag: str | None = None
    s3: Any = None


def local_backend(tmp_path: Path) -> Backend:
    return Backend("local", local_env(tmp_path / "data"), tmp_path / "data")


def s3_redis_backend(
    tmp_path: Path, s3_endpoint: str, redis_addr: tuple[str, int], bucket_prefix: str, **extra: str
) -> Backend:
    env, bucket, tag = s3_redis_env(tmp_path / "data", s3_endpoint, redis_addr, bucket_prefix, **extra)
    return Backend("s3-redis", env, tmp_path / "data", s3_endpoint, bucket, redis_addr, tag)


async def create_bucket(backend: Backend) -> None:
    """Create the test's bucket (nothing for the local backends)."""
    if backend.bucket:
        async with s3_client(backend.s3_endpoint) as s3:
            await s3.create_bucket(Bucket=backend.bucket)


async def remove_everything(backend: Backend, best_effort: bool = False) -> None:
    """Delete the test's bucket (objects and pending multipart uploads) and Redis keys;
    ``best_effort``: a Redis that is gone (a test stopped it) is not an error."""
    if backend.bucket:
        if backend.s3 is not None:
            await empty_bucket(backend.s3, backend.bucket)
        else:
            async with s3_client(backend.s3_endpoint) as s3:
                await empty_bucket(s3, backend.bucket)
    if backend.redis:
        try:
            await delete_tagged_keys(backend.redis, backend.tag)
        except Exception:
            if not best_effort:
                raise


@contextlib.asynccontextmanager
async def s3_session(backend: Backend) -> AsyncIterator[Backend]:
    """Create the test's bucket; afterwards remove it and the test's Redis keys."""
    async with s3_client(backend.s3_endpoint) as s3:
        await s3.create_bucket(Bucket=backend.bucket)
        backend.s3 = s3
        try:
            yield backend
        finally:
            await remove_everything(backend)
            backend.s3 = None
