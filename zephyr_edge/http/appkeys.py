"""Typed application keys: what :func:`zephyr_edge.http.app.make_app` puts in the application.

A module of its own so that feature modules (health, upload, serve...) can import the keys
without importing :mod:`zephyr_edge.http.app`, which imports them. ``app.py`` re-exports them. The health feature keeps its own key
(:data:`zephyr_edge.http.health.READINESS_KEY`) beside the state it types.
"""

from __future__ import annotations

from aiohttp import web

from zephyr_edge.settings.fields import Config
from zephyr_edge.kv.base import KV
from zephyr_edge.catalog.records import Catalog
from zephyr_edge.settings.redaction import Redactor
from zephyr_edge.storage.base import Storage

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
