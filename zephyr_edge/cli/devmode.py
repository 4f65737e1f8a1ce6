"""``zephyr-edge dev``: a zero-setup worker on the local (embedded) backends.

Whatever the environment or the config file does not set is chosen here: local storage
and KV, data under ``./zephyr-edge-data``, listening on loopback, and a JWT secret
generated once and persisted (mode 0600) in the data directory, reused on later starts.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from zephyr_edge.domain import publicurl, tokens
from zephyr_edge.settings.fields import KEY_PREFIX, Config
from zephyr_edge.errors import ConfigError

DEV_DATA_DIR = "zephyr-edge-data"
#: File of the generated secret, inside the data directory.
SECRET_FILE = "dev-jwt-secret"
DEV_APP_UID = "dev-app"
DEV_TOKEN_TTL_S = 24 * 3600
SECRET_BYTES = 32

#: Defaults of dev mode, applied as CLI overrides when neither env nor file sets them.
DEV_DEFAULTS: Mapping[str, str] = MappingProxyType({
    KEY_PREFIX + "STORAGE_BACKEND": "local",
    KEY_PREFIX + "KV_BACKEND": "local",
    KEY_PREFIX + "LISTEN_HOST": "127.0.0.1",
    KEY_PREFIX + "ACCESS_LOG": "true",
    KEY_PREFIX + "DATA_DIR": DEV_DATA_DIR,
})


def read_secret(folder: Path) -> str | None:
    """The secret persisted in ``folder``, or None when there is none."""
    path = folder / SECRET_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError([f"cannot read the dev JWT secret {path}: {exc.strerror or exc}"]) from exc
    return text or None


def load_or_create_secret(folder: Path) -> tuple[str, bool]:
    """The secret persisted in ``folder``, created (mode 0600) if absent; (secret, created).

    Creation is atomic: the secret is written to a private temporary file and linked into
    place, so two workers starting at once agree on one secret.
    """
    existing = read_secret(folder)
    if existing:
        return existing, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dev-jwt-secret-", dir=folder)  # mode 0600
        secret = secrets.token_urlsafe(SECRET_BYTES)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secret + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, folder / SECRET_FILE)
        except FileExistsError:
            pass  # another worker won the race: use its secret
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise ConfigError([f"cannot create the dev JWT secret in {folder}: {exc.strerror or exc}"]) from exc
    persisted = read_secret(folder)
    if not persisted:
        raise ConfigError([f"the dev JWT secret {folder / SECRET_FILE} is empty"])
    return persisted, persisted == secret


def overrides(raw: Mapping[str, tuple[Any, str]], port: int | None = None) -> tuple[dict[str, Any], str]:
    """CLI overrides for dev mode, given what env and file set; and where the secret is from."""
    def unset(key: str) -> bool:
        return key not in raw or raw[key][0] in ("", None)

    out: dict[str, Any] = {key: value for key, value in DEV_DEFAULTS.items() if unset(key)}
    if port is not None:
        out[KEY_PREFIX + "PORT"] = port
    key = KEY_PREFIX + "JWT_SECRET"
    if not unset(key):
        return out, f"{key} (from {raw[key][1]})"
    folder = Path(str(out.get(KEY_PREFIX + "DATA_DIR") or raw[KEY_PREFIX + "DATA_DIR"][0]))
    out[key], created = load_or_create_secret(folder)
    path = (folder / SECRET_FILE).resolve()
    return out, f"{'generated and saved to' if created else 'read from'} {path} (reused on the next start)"


def apps_url(config: Config) -> str:
    """Where ``zephyr-edge dev`` serves deployed apps: ``http://<label>.localhost:<port>`` (the
    version URLs its uploads answer) or, with ``ZE_WORKER_PUBLIC_URL``, the label under that
    host."""
    worker = config.worker
    if worker.public_url:
        base = publicurl.from_public_url(worker.public_url)
    else:
        port = int(worker.port)
        base = publicurl.PublicBase("http", "localhost", None if port == 80 else port)
    if base.is_local:
        return base.url(f"<label>{publicurl.LOCALHOST_DELIMITER}{publicurl.LOCALHOST}")
    return base.url(f"<label>{worker.delimiter}{base.host}")


def attach_overrides(raw: Mapping[str, tuple[Any, str]], data_dir: str) -> dict[str, Any]:
    """CLI overrides for an admin command (``versions``, ``publish``...) working on the data
    of the ``zephyr-edge dev`` worker whose data directory is ``data_dir``: that directory,
    dev mode's backends unless env or file choose others, and the secret the dev worker
    generated there unless one is configured. Never creates anything: :class:`ConfigError`
    when ``data_dir`` holds no dev worker's data."""
    def unset(key: str) -> bool:
        return key not in raw or raw[key][0] in ("", None)

    folder = Path(data_dir)
    if not folder.is_dir():
        raise ConfigError([f"--data-dir {data_dir}: no such directory (the data directory of `zephyr-edge dev`)"])
    out: dict[str, Any] = {key: value for key, value in DEV_DEFAULTS.items() if unset(key)}
    out[KEY_PREFIX + "DATA_DIR"] = str(folder)
    key = KEY_PREFIX + "JWT_SECRET"
    if unset(key):
        secret = read_secret(folder)
        if not secret:
            raise ConfigError([
                f"--data-dir {data_dir}: {folder / SECRET_FILE} does not exist, so this is not the data directory "
                f"of a `zephyr-edge dev` worker (or set {key})"
            ])
        out[key] = secret
    return out


def banner(config: Config, app_uid: str, secret_source: str) -> str:
    """What ``zephyr-edge dev`` prints once it listens: where it listens, where apps are
    served, how to point the build plugin at it, a token and how to get others."""
    worker = config.worker
    host = "127.0.0.1" if worker.listen_host in ("0.0.0.0", "::", "") else worker.listen_host
    url = f"http://{host}:{worker.port}"
    token = tokens.mint(worker.jwt_secret, app_uid, DEV_TOKEN_TTL_S)
    data = Path(worker.data_dir).resolve()
    return "\n".join(
        [
            "",
            f"zephyr-edge dev: worker listening on {url} (uploads and probes; no app is served there)",
            f"  storage: {config.storage.name}, kv: {config.kv.name}, data: {data}",
            f"  JWT secret: {secret_source}",
            f"  health: {url}/healthz  readiness: {url}/readyz",
            "",
            "  Deployed apps are served on their own hostnames:",
            f"    {apps_url(config)}/",
            "  each version's URL is the answer to its snapshot upload (browsers resolve every",
            "  *.localhost name to this machine); list them with",
            f"    zephyr-edge versions --app <application_uid> --data-dir {data}",
            "",
            "  Point the Zephyr build plugin (zephyr-agent) at this worker: the control plane it",
            "  asks (ZE_API and ZE_API_GATE) must answer GET /application-config/<application_uid>",
            f"  with EDGE_URL {url} and, as its jwt, a write token for that application.",
            f"  Write token for application {app_uid!r} (valid {DEV_TOKEN_TTL_S // 3600} h):",
            f"    {token}",
            "  Or send it yourself as the `can_write_jwt` header of uploads, e.g.",
            f"    curl -X POST -H 'can_write_jwt: <token>' --data-binary @file '{url}/upload?type=file&hash=<sha>&filename=<path>'",
            "  Tokens for other applications:",
            f"    zephyr-edge token --app <application_uid> --data-dir {data}",
            "",
        ]
    )
