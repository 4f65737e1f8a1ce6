"""Typed application keys: what :func:`zephyr_edge.http.app.make_app` puts in the application.

A module of its own so that feature modules (health, upload, serve...) can import the keys
without importing :mod:`zephyr_edge.http.app`, which imports them. ``app.py`` re-exports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from zephyr_edge.settings.config import Config
from zephyr_edge.kv.base import KV
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.settings.redaction import Redactor
from zephyr_edge.storage.base import Storage

if TYPE_CHECKING:
    from zephyr_edge.http.health import Readiness

#: The typed configuration the app was built from.
CONFIG_KEY = web.AppKey("config", Config)
#: Masks configured secret values in anything sent to a client.
REDACTOR_KEY = web.AppKey("redactor", Redactor)
#: The open storage backend (set by the backends cleanup context).
STORAGE_KEY = web.AppKey("storage", Storage)
#: The open KV backend (set by the backends cleanup context).
KV_KEY = web.AppKey("kv", KV)
#: Snapshots, hostnames and hash lists on the KV (set by the backends cleanup context).
CATALOG_KEY = web.AppKey("catalog", Catalog)
#: Readiness state: the last storage write-check result (set by the health cleanup context).
READINESS_KEY: web.AppKey[Readiness] = web.AppKey("readiness")
