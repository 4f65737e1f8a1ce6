"""The ``zephyr-edge`` subcommands. :mod:`zephyr_edge.cli` parses argv and passes the
environment in; nothing here reads ``os.environ`` or ``sys.argv``.

Each command returns the process exit code: 0 on success, 2 for a configuration problem
(printed to stderr as one message listing every problem, without a traceback), 1 when the
worker fails at run time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from zephyr_edge import config as cfg
from zephyr_edge import devmode, tokens
from zephyr_edge.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
JWT_SECRET_KEY = cfg.KEY_PREFIX + "JWT_SECRET"
DATA_DIR_KEY = cfg.KEY_PREFIX + "DATA_DIR"


def config_error(exc: ConfigError, stream: TextIO | None = None) -> int:
    """Print a configuration error as one readable message; the exit code."""
    print(f"zephyr-edge: {exc}", file=stream or sys.stderr)
    return EXIT_CONFIG


def _print_warnings(config: cfg.Config) -> None:
    for warning in config.warnings:
        print(f"zephyr-edge: warning: {warning}", file=sys.stderr)


def serve(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> int:
    """``zephyr-edge serve``: load the configuration and run the worker."""
    try:
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    from zephyr_edge import server  # the HTTP stack, only for the commands that serve

    return server.serve(config)


def dev(environ: Mapping[str, str], port: int | None = None, app_uid: str = devmode.DEV_APP_UID) -> int:
    """``zephyr-edge dev``: local backends, a persisted secret, a ready token, then serve."""
    try:
        raw = cfg.gather(environ)
        overrides, secret_source = devmode.overrides(raw, port)
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    banner = devmode.banner(config, app_uid, secret_source)
    from zephyr_edge import server

    return server.serve(config, on_listening=lambda: print(banner, file=sys.stderr, flush=True))


def show_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> int:
    """``zephyr-edge config``: the effective configuration as JSON (secrets redacted)."""
    try:
        config = cfg.load(environ, overrides)
    except ConfigError as exc:
        return config_error(exc)
    _print_warnings(config)
    print(json.dumps(cfg.describe(config), indent=2))
    return EXIT_OK


def _admin_config(environ: Mapping[str, str]) -> cfg.Config:
    """The worker's configuration for an admin command; backend log lines go to stderr as
    JSON (stdout carries the command's own output)."""
    config = cfg.load(environ)
    from zephyr_edge import logs, redaction

    logs.configure(cfg.LogLevel.WARN, config.worker.replica_name, redaction.secret_values(config), stream=sys.stderr)
    return config


def publish(
    environ: Mapping[str, str], hosts: list[str], snapshot_id: str, *, force: bool = False, action: str = "publish"
) -> int:
    """``zephyr-edge publish`` / ``rollback``: point hostnames at a stored snapshot."""
    try:
        config = _admin_config(environ)
    except ConfigError as exc:
        return config_error(exc)
    from zephyr_edge import admin

    return admin.publish(config, hosts, snapshot_id, force=force, action=action)


def versions(environ: Mapping[str, str], app_uid: str, as_json: bool = False) -> int:
    """``zephyr-edge versions``: an app's snapshots, newest first, with their hostnames."""
    try:
        config = _admin_config(environ)
    except ConfigError as exc:
        return config_error(exc)
    from zephyr_edge import admin

    return admin.versions(config, app_uid, as_json=as_json)


def replicate(
    environ: Mapping[str, str], *, resync: str | None = None, status: bool = False, forget: str | None = None
) -> int:
    """``zephyr-edge replicate --resync URL`` / ``--status``
    (:mod:`zephyr_edge.replication.resync_command`)."""
    try:
        config = cfg.load(environ)
    except ConfigError as exc:
        return config_error(exc)
    _print_warnings(config)
    from zephyr_edge.replication import resync_command

    return resync_command.main(config, resync_url=resync, show_status=status, forget_url=forget)


def find_secret(environ: Mapping[str, str], data_dir: str | None = None) -> str:
    """The JWT secret to sign with: the configured one (file or environment), else the one
    ``zephyr-edge dev`` persisted in the data directory. Raises :class:`ConfigError`.
    """
    raw = cfg.gather(environ)
    configured = str(raw.get(JWT_SECRET_KEY, ("", ""))[0] or "")
    if configured:
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
    return EXIT_OK
