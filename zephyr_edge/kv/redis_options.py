"""The options of the Redis KV backends (``ZE_WORKER_REDIS_*``), apart from the backend and
its clients (:mod:`zephyr_edge.kv.redis`, :mod:`zephyr_edge.kv.redis_clients`), which both read them."""

from __future__ import annotations

import attrs

from zephyr_edge.settings.fields import Port, secret
from zephyr_edge.settings.validators import at_least


@attrs.frozen
class RedisOptions:
    """``ZE_WORKER_REDIS_*``: Zephyr's documented keys, then ours."""

    host: str
    port: Port = Port(6379)
    password: str = secret("", repr=False)
    tls: bool = False
    db: int = attrs.field(default=0, validator=at_least(0))
    #: ACL user (Redis 6+); empty means the default user.
    username: str = ""
    #: CA bundle to verify the server's certificate with (default: the system store).
    tls_ca_file: str = ""
    connect_timeout_ms: int = attrs.field(default=2000, validator=at_least(1))
    command_timeout_ms: int = attrs.field(default=5000, validator=at_least(1))
