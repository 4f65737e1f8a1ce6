"""The Redis KV's ``atomic_if`` script beyond the conformance suite: sent again when a
server forgot it (``SCRIPT FLUSH``, a restart, a new node), on a standalone server and on
every master of a cluster, and its errors translated like every other call's."""

from __future__ import annotations

import pytest

from tests.kv.test_redis import SPREAD_TAGS, open_kv
from zephyr_edge.errors import BackendError, BackendUnavailable
from zephyr_edge.kv.base import Set
from zephyr_edge.kv.redis import RedisKV


async def _flush_scripts(kv: RedisKV) -> None:
    client = await kv._clients.get()
    if kv.mode == "cluster":  # SCRIPT FLUSH on every primary
        for node in client.connection_pool.cluster_layout.primaries:
            async with client.connection_pool.acquire(node=node) as connection:
                await connection.create_request(b"SCRIPT FLUSH", decode=False)
    else:
        await client.script_flush()


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_atomic_if_sends_its_script_again_after_script_flush(redis_addr, redis_cluster_nodes, backend):
    addr = redis_addr if backend == "redis" else redis_cluster_nodes[0]
    keys = [f"{{{tag}}}:cas" for tag in SPREAD_TAGS]  # every master of the cluster
    async with open_kv(backend, *addr) as kv:
        try:
            await kv.ping()
            for round_ in range(2):
                await _flush_scripts(kv)  # the server forgot the script: NOSCRIPT, then EVAL
                for k in keys:
                    assert await kv.atomic_if({k: None if round_ == 0 else b"0"}, [Set(k, str(round_).encode())])
                    assert await kv.atomic_if({k: b"wrong"}, [Set(k, b"lost")]) is False
            assert await kv.get_many(keys) == [b"1"] * len(keys)
        finally:
            for k in keys:
                await kv.delete(k)


async def test_atomic_if_on_a_set_is_a_backend_error(redis_addr, unique):
    key = f"{{ze-test-{unique}}}:set"
    async with open_kv("redis", *redis_addr) as kv:
        try:
            await kv.sadd(key, b"m")
            with pytest.raises(BackendError) as caught:
                await kv.atomic_if({key: None}, [Set(key + "x", b"v")])
            assert not isinstance(caught.value, BackendUnavailable)
            assert "atomic_if" in str(caught.value) and "wrong kind of value" in str(caught.value), str(caught.value)
            assert caught.value.__cause__ is not None
            assert await kv.get(key + "x") is None
        finally:
            await kv.delete(key)
