"""Backends as plugins: discovery through entry points (one group per kind, built-ins
included) and opening the configured ones.

Only the selected backend is imported. An unknown name fails with the installed names.
:func:`open_storage` and :func:`open_kv` are the one place that calls a backend's
``open()``: the worker, the admin commands and the tests all go through them.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from zephyr_edge.errors import ConfigError, PluginNotFound
from zephyr_edge.settings.fields import Config

if TYPE_CHECKING:
    from zephyr_edge.kv.base import KV
    from zephyr_edge.storage.base import Storage

#: Entry-point group of each backend kind.
GROUPS = {"storage": "zephyr_edge.storage", "kv": "zephyr_edge.kv"}


def installed(kind: str) -> dict[str, EntryPoint]:
    """Installed backends of ``kind`` by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def load(kind: str, name: str) -> type:
    """Import and return the backend class registered as ``name`` for ``kind``.

    Raises :class:`PluginNotFound` for an unknown name and :class:`ConfigError` when the
    entry point does not load or is not a complete implementation of the kind's SPI.
    """
    eps = installed(kind)
    if name not in eps:
        raise PluginNotFound(kind, name, list(eps))
    try:
        cls = eps[name].load()
    except Exception as exc:  # a broken third-party distribution: say which and why
        raise ConfigError([f"{kind} backend {name!r} ({eps[name].value}) failed to import: {exc!r}"]) from exc
    base = _base(kind)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError([f"{kind} backend {name!r} ({eps[name].value}) is not a subclass of {base.__qualname__}"])
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError([f"{kind} backend {name!r} ({eps[name].value}) does not implement: {missing}"])
    return cls


def _base(kind: str) -> type:
    if kind == "storage":
        from zephyr_edge.storage.base import Storage

        return Storage
    from zephyr_edge.kv.base import KV

    return KV


def open_storage(config: Config) -> AbstractAsyncContextManager[Storage]:
    """The configured storage backend, open for the ``async with`` block."""
    return config.storage.cls.open(config.storage.options, Path(config.worker.data_dir))


def open_kv(config: Config) -> AbstractAsyncContextManager[KV]:
    """The configured KV backend, open for the ``async with`` block."""
    return config.kv.cls.open(config.kv.options, Path(config.worker.data_dir))
