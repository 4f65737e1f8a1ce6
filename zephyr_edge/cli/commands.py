"""The ``zephyr-edge`` subcommands. :mod:`zephyr_edge.cli.main` parses argv and passes the
environment in; nothing here reads ``os.environ`` or ``sys.argv``.

Each command returns the process exit code: 0 on success, 2 for a configuration problem
(printed to stderr as one message listing every problem, without a traceback), 1 when the
worker fails at run time (its address cannot be bound, e.g. the port is in use) or an
admin command finds nothing to act on.

``publish``, ``rollback``, ``versions`` and ``replicate`` take ``--data-dir DIR`` to work on
the data of a ``zephyr-edge dev`` worker (local backends in DIR, the secret it generated
there) instead of the production configuration.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from zephyr_edge.settings import config as cfg
from zephyr_edge.cli import devmode, exits
from zephyr_edge.domain import tokens
from zephyr_edge.errors import ConfigError

JWT_SECRET_KEY = cfg.KEY_PREFIX + "JWT_SECRET"
DATA_DIR_KEY = cfg.KEY_PREFIX + "DATA_DIR"


def config_error(exc: ConfigError, stream: TextIO | None = None, hint: str | None = None) -> int:
    """Print a configuration error as one readable message (and ``hint``); the exit code."""
    print(f"zephyr-edge: {exc}", file=stream or sys.stderr)
    if hint:
        print(f"zephyr-edge: hint: {hint}", file=stream or sys.stderr)
    return exits.USAGE


def admin_config_error(exc: ConfigError, data_dir: str | None) -> int:
    """:func:`config_error` for an admin command, hinting at ``--data-dir`` when not given."""
    return config_error(exc, hint=None if data_dir is not None else DEV_HINT)


def _print_warnings(config: cfg.Config) -> None:
    for warning in config.warnings:
        print(f"zephyr-edge: warning: {warning}", file=sys.stderr)


def serve(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> int:
    """``zephyr-edge serve``: load the configuration and run the worker."""
    try:
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    from zephyr_edge.cli import runner  # the HTTP stack, only for the commands that serve

    return runner.serve(config)


def dev(environ: Mapping[str, str], port: int | None = None, app_uid: str = devmode.DEV_APP_UID) -> int:
    """``zephyr-edge dev``: local backends, a persisted secret, a ready token, then serve."""
    try:
        raw = cfg.gather(environ)
        overrides, secret_source = devmode.overrides(raw, port)
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    banner = devmode.banner(config, app_uid, secret_source)
    from zephyr_edge.cli import runner

    return runner.serve(config, on_listening=lambda: print(banner, file=sys.stderr, flush=True))


def show_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> int:
    """``zephyr-edge config``: the effective configuration as JSON (secrets redacted)."""
    try:
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    _print_warnings(config)
    print(json.dumps(cfg.describe(config), indent=2))
    return exits.OK


#: Printed after a configuration error of an admin command run without ``--data-dir``.
DEV_HINT = (
    "to work on the data of a `zephyr-edge dev` worker instead, pass --data-dir with its data "
    f"directory (./{devmode.DEV_DATA_DIR} by default)"
)


def load_for_admin(environ: Mapping[str, str], data_dir: str | None = None) -> cfg.Config:
    """The configuration an admin command works on: the worker's (as for ``serve``), or with
    ``data_dir`` that of the ``zephyr-edge dev`` worker keeping its data there
    (:func:`devmode.attach_overrides`). Raises :class:`ConfigError`."""
    if data_dir is None:
        return cfg.load(environ)
    return cfg.load(environ, devmode.attach_overrides(cfg.gather(environ), data_dir))


def _admin_config(environ: Mapping[str, str], data_dir: str | None = None) -> cfg.Config:
    """The configuration for an admin command (:func:`load_for_admin`); backend log lines
    go to stderr as JSON (stdout carries the command's own output)."""
    config = load_for_admin(environ, data_dir)
    from zephyr_edge.cli import logs
    from zephyr_edge.settings import redaction

    logs.configure(cfg.LogLevel.WARN, config.worker.replica_name, redaction.secret_values(config), stream=sys.stderr)
    return config


def publish(
    environ: Mapping[str, str], hosts: list[str], snapshot_id: str, *, force: bool = False, action: str = "publish",
    data_dir: str | None = None,
) -> int:
    """``zephyr-edge publish`` / ``rollback``: point hostnames at a stored snapshot."""
    try:
        config = _admin_config(environ, data_dir)
    except ConfigError as exc:
        return admin_config_error(exc, data_dir)
    from zephyr_edge.cli import admin

    return admin.publish(config, hosts, snapshot_id, force=force, action=action)


def versions(environ: Mapping[str, str], app_uid: str, as_json: bool = False, data_dir: str | None = None) -> int:
    """``zephyr-edge versions``: an app's snapshots, newest first, with their hostnames."""
    try:
        config = _admin_config(environ, data_dir)
    except ConfigError as exc:
        return admin_config_error(exc, data_dir)
    from zephyr_edge.cli import admin

    return admin.versions(config, app_uid, as_json=as_json)


def replicate(
    environ: Mapping[str, str], *, resync: str | None = None, status: bool = False, forget: str | None = None,
    data_dir: str | None = None,
) -> int:
    """``zephyr-edge replicate --resync URL`` / ``--status``
    (:mod:`zephyr_edge.cli.replicate`)."""
    try:
        config = load_for_admin(environ, data_dir)
    except ConfigError as exc:
        return admin_config_error(exc, data_dir)
    _print_warnings(config)
    from zephyr_edge.cli import replicate

    return replicate.main(config, resync_url=resync, show_status=status, forget_url=forget)


def find_secret(environ: Mapping[str, str], data_dir: str | None = None) -> str:
    """The JWT secret to sign with: the configured one (file or environment), else the one
    ``zephyr-edge dev`` persisted in the data directory. Raises :class:`ConfigError`.
    """
    raw = cfg.gather(environ)
    configured = str(raw.get(JWT_SECRET_KEY, ("", ""))[0] or "")
    if configured:
        if cfg.is_placeholder(configured):
            raise ConfigError(
                [f"{JWT_SECRET_KEY} is still a placeholder from the example configuration: replace it with a real secret"]
            )
        return configured
    folder = Path(data_dir or str(raw.get(DATA_DIR_KEY, ("", ""))[0] or "") or devmode.DEV_DATA_DIR)
    secret = devmode.read_secret(folder)
    if secret:
        return secret
    raise ConfigError(
        [
            f"{JWT_SECRET_KEY} is required but not set, and {folder / devmode.SECRET_FILE} does not exist "
            "(set the secret, or point --data-dir / ZE_WORKER_DATA_DIR at the data directory of "
            "`zephyr-edge dev`)"
        ]
    )


def token(environ: Mapping[str, str], app_uid: str, ttl_s: int, data_dir: str | None = None) -> int:
    """``zephyr-edge token``: print a ``can_write_jwt`` for ``app_uid``."""
    try:
        secret = find_secret(environ, data_dir)
    except ConfigError as exc:
        return config_error(exc)
    print(tokens.mint(secret, app_uid, ttl_s))
    return exits.OK
