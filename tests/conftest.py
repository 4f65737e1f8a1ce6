"""Session-wide real services: reuse what ``.ci/run`` started (``ZE_TEST_*`` variables),
start the rest on loopback here, and stop what we started."""

from __future__ import annotations

import os
import uuid

import pytest

# the conformance suites ship in the package: give their asserts pytest's full diffs
pytest.register_assert_rewrite("zephyr_edge.kv.testing", "zephyr_edge.storage.testing")

from tests.services import ENV_CLUSTER, ENV_REDIS, ENV_S3, MotoServer, RedisCluster, RedisServer, port_open


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of an S3-protocol server (moto's server mode) on loopback."""
    if os.environ.get(ENV_S3):
        yield os.environ[ENV_S3]
        return
    server = MotoServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_addr():
    """(host, port) of a standalone Redis server (the machine's, on 6379, when it answers)."""
    if os.environ.get(ENV_REDIS):
        host, port = os.environ[ENV_REDIS].rsplit(":", 1)
        yield host, int(port)
        return
    if port_open(6379):
        yield "127.0.0.1", 6379
        return
    server = RedisServer().start()
    try:
        yield "127.0.0.1", server.port
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster_nodes():
    """[(host, port), ...] of a running 3-master Redis Cluster."""
    if os.environ.get(ENV_CLUSTER):
        yield [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in os.environ[ENV_CLUSTER].split(","))]
        return
    cluster = RedisCluster().start()
    try:
        yield cluster.startup_nodes
    finally:
        cluster.cleanup()


@pytest.fixture
def unique():
    """A short unique string to isolate a test's keys, buckets and folders."""
    return uuid.uuid4().hex[:12]
