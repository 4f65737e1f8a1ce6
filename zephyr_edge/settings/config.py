"""Typed configuration: ``ZE_WORKER_*`` environment + the JSON(C) file → frozen attrs objects.

Nothing here reads ``os.environ``: :mod:`zephyr_edge.cli.main` passes the environment in.
Every string value is converted and validated by one cattrs converter; every problem is
collected and reported at once as a :class:`ConfigError`.

A field's key is ``ZE_WORKER_`` + its prefix + its upper-cased name, unless its metadata
gives ``key``. Field metadata ``secret=True`` redacts the value in ``zephyr-edge config``, and
the worker refuses to start while such a value is a placeholder of the shipped examples.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs

from zephyr_edge.errors import ConfigError
from zephyr_edge.settings.fields import (
    CONFIG_FILE_KEY,
    KEY_PREFIX,
    BackendChoice,
    Config,
    Delimiter,
    LogLevel,
    Port,
    Url,
    WorkerConfig,
    key_of,
)

#: Placeholders the project's shipped configurations put where a secret goes:
#: ``CHANGE-ME...`` (any case, with or without the hyphen) and ``<...>`` (the examples of
#: docs/replication.md). A worker refuses to start while a secret of its configuration is one.
PLACEHOLDER_PREFIX = "changeme"
#: Below this many bytes ZE_WORKER_JWT_SECRET is warned about at start.
MIN_JWT_SECRET_BYTES = 32

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DELIMITERS = ("-", ".", "_")


# --- conversion -------------------------------------------------------------------------


def _to_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false/1/0/yes/no), got {value!r}")


def _to_int(value: Any, _: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _to_float(value: Any, _: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


def _to_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a string, got {value!r}")


def _to_port(value: Any, _: Any) -> Port:
    port = _to_int(value, int)
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port number between 1 and 65535, got {value!r}")
    return Port(port)


def _to_url(value: Any, _: Any) -> Url:
    text = _to_str(value, str).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    return Url(text.rstrip("/"))


def _to_delimiter(value: Any, _: Any) -> Delimiter:
    text = _to_str(value, str)
    if text not in _DELIMITERS:
        raise ValueError(f"expected one of {', '.join(repr(d) for d in _DELIMITERS)}, got {value!r}")
    return Delimiter(text)


def _to_log_level(value: Any, _: Any) -> LogLevel:
    text = _to_str(value, str).strip().lower()
    text = {"warning": "warn", "critical": "fatal"}.get(text, text)
    try:
        return LogLevel(text)
    except ValueError:
        names = ", ".join(level.value for level in LogLevel)
        raise ValueError(f"expected one of {names}, got {value!r}") from None


def _to_url_tuple(value: Any, _: Any) -> tuple[Url, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON array of URLs: {exc.msg} at column {exc.colno}") from None
        else:
            value = [part for part in (p.strip() for p in text.split(",")) if part]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a JSON array or a comma-separated list of URLs, got {value!r}")
    return tuple(_to_url(item, Url) for item in value)


def make_converter() -> cattrs.Converter:
    """The converter for configuration values (strings from env/file → typed values)."""
    conv = cattrs.Converter()
    conv.register_structure_hook(bool, _to_bool)
    conv.register_structure_hook(int, _to_int)
    conv.register_structure_hook(float, _to_float)
    conv.register_structure_hook(str, _to_str)
    conv.register_structure_hook(Port, _to_port)
    conv.register_structure_hook(Url, _to_url)
    conv.register_structure_hook(Delimiter, _to_delimiter)
    conv.register_structure_hook(LogLevel, _to_log_level)
    conv.register_structure_hook_func(lambda t: t == tuple[Url, ...], _to_url_tuple)
    conv.register_unstructure_hook(LogLevel, lambda level: level.value)
    return conv


# --- sources ----------------------------------------------------------------------------


def strip_jsonc(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments and trailing commas, outside strings.

    Removed characters become spaces (newlines are kept), so JSON error positions still
    match the file.
    """
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in ``out`` of a comma that may turn out to be trailing
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            pending_comma = -1
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        else:
            if ch in "}]" and pending_comma >= 0:
                out[pending_comma] = " "
            if ch == ",":
                pending_comma = len(out)
            elif not ch.isspace():
                pending_comma = -1
            out.append(ch)
            i += 1
    return "".join(out)


def read_config_file(path: str) -> dict[str, Any]:
    """Parse the JSON(C) config file; every failure is a :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{CONFIG_FILE_KEY}: cannot read {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{CONFIG_FILE_KEY}: {path} is not UTF-8 text"]) from exc
    try:
        data = json.loads(strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{CONFIG_FILE_KEY}: {path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{CONFIG_FILE_KEY}: {path}: expected a JSON object of ZE_WORKER_* keys"])
    return data


def gather(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Every ``ZE_WORKER_*`` value with its source; the file's values beat the environment's."""
    raw: dict[str, tuple[Any, str]] = {
        k: (v, "env") for k, v in environ.items() if k.startswith(KEY_PREFIX) and k != CONFIG_FILE_KEY
    }
    path = environ.get(CONFIG_FILE_KEY, "").strip()
    if path:
        for key, value in read_config_file(path).items():
            raw[str(key)] = (value, "file")
    return raw


# --- structuring ------------------------------------------------------------------------


def _structure(
    cls: type, prefix: str, raw: Mapping[str, tuple[Any, str]], conv: cattrs.Converter,
    problems: list[str], sources: dict[str, str],
) -> Any:
    """Build ``cls`` from ``raw``, appending every problem to ``problems``."""
    values: dict[str, Any] = {}
    before = len(problems)
    for field in attrs.fields(attrs.resolve_types(cls)):
        key = key_of(field, prefix)
        if key not in raw or (raw[key][0] == "" and field.default is attrs.NOTHING):
            if field.default is attrs.NOTHING:
                problems.append(f"{key} is required but not set")
            else:
                sources[key] = "default"
            continue
        value, source = raw[key]
        sources[key] = source
        try:
            values[field.name] = conv.structure(value, field.type)
            if field.validator is not None:
                field.validator(None, field, values[field.name])
        except (ValueError, TypeError) as exc:
            problems.append(f"{key}: {exc}")
            values.pop(field.name, None)
        except cattrs.BaseValidationError as exc:
            problems.append(f"{key}: " + "; ".join(cattrs.transform_error(exc)))
            values.pop(field.name, None)
    if len(problems) > before:
        return None
    return cls(**values)


def known_keys(cls: type | None, prefix: str) -> set[str]:
    """The keys of an options class."""
    return {key_of(f, prefix) for f in attrs.fields(cls)} if cls is not None else set()


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` is one of the placeholders the shipped configurations carry."""
    text = str(value).strip()
    squashed = re.sub(r"[\s_-]", "", text).lower()
    return squashed.startswith(PLACEHOLDER_PREFIX) or (len(text) > 2 and text[0] == "<" and text[-1] == ">")


def secret_keys(parts: list[tuple[type, str]]) -> list[str]:
    """The keys of the fields marked secret in ``[(attrs class, options prefix), ...]``."""
    return [key_of(f, prefix) for cls, prefix in parts for f in attrs.fields(cls) if f.metadata.get("secret")]


def placeholder_problems(raw: Mapping[str, tuple[Any, str]], parts: list[tuple[type, str]]) -> list[str]:
    """One problem per secret still holding a shipped placeholder (naming the key, never the value)."""
    return [
        f"{key} is still a placeholder from the example configuration: replace it with a real secret"
        for key in secret_keys(parts)
        if key in raw and is_placeholder(raw[key][0])
    ]


def short_secret_warnings(worker: WorkerConfig) -> list[str]:
    size = len(worker.jwt_secret.encode("utf-8"))
    if size >= MIN_JWT_SECRET_BYTES:
        return []
    return [
        f"{KEY_PREFIX}JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes: tokens signed with it are "
        "easier to forge; use a long random string (e.g. `openssl rand -base64 48`)"
    ]


def _backend_prefix(name: str) -> str:
    return KEY_PREFIX + name.upper().replace("-", "_") + "_"


def _unknown_key_warnings(
    raw: Mapping[str, tuple[Any, str]], known: set[str], foreign_prefixes: set[str], own_prefixes: set[str]
) -> list[str]:
    """Warnings for keys nobody reads, with a did-you-mean hint.

    A key under the prefix of an installed but unselected backend is not warned about (one
    file may serve several setups), unless a selected backend's prefix claims it at least
    as specifically: a typo in a key of a selected backend must not pass silently.
    """
    warnings = []
    for key in sorted(raw):
        if key in known:
            continue
        foreign = max((len(p) for p in foreign_prefixes if key.startswith(p)), default=0)
        own = max((len(p) for p in own_prefixes if key.startswith(p)), default=0)
        if foreign > own:
            continue
        hint = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        where = raw[key][1]
        warnings.append(
            f"unknown configuration key {key} (from {where})" + (f"; did you mean {hint[0]}?" if hint else "")
        )
    return warnings


def load(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the :class:`Config` from an environment mapping (and CLI overrides, which win).

    Raises :class:`ConfigError` listing every problem found.
    """
    from zephyr_edge import plugins
    from zephyr_edge.domain import hostnames

    raw = gather(environ)
    for key, value in (overrides or {}).items():
        raw[key] = (value, "cli")
    conv = make_converter()
    problems: list[str] = []
    sources: dict[str, str] = {}
    worker = _structure(WorkerConfig, "", raw, conv, problems, sources)

    chosen: dict[str, BackendChoice] = {}
    known = known_keys(WorkerConfig, "")
    for kind in ("storage", "kv"):
        default = getattr(attrs.fields(WorkerConfig), f"{kind}_backend").default
        name = raw.get(f"{KEY_PREFIX}{kind.upper()}_BACKEND", (default, ""))[0]
        try:
            cls = plugins.load(kind, str(name))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        known |= known_keys(cls.Options, cls.options_prefix)
        options = _structure(cls.Options, cls.options_prefix, raw, conv, problems, sources) if cls.Options else None
        chosen[kind] = BackendChoice(str(name), cls, options)

    parts = [(WorkerConfig, "")] + [
        (choice.cls.Options, choice.cls.options_prefix) for choice in chosen.values() if choice.cls.Options is not None
    ]
    problems.extend(placeholder_problems(raw, parts))
    if worker is not None:
        problems.extend(hostnames.prefix_problems(worker.redis_prefix_envs, worker.redis_prefix_snapshots))
        if worker.public_url:
            try:
                _to_url(worker.public_url, Url)
            except ValueError as exc:
                problems.append(f"{KEY_PREFIX}PUBLIC_URL: {exc}")
    if problems or worker is None:
        raise ConfigError(problems)
    own = set()
    for choice in chosen.values():
        own.add(_backend_prefix(choice.name))
        if choice.cls.options_prefix:
            own.add(_backend_prefix(choice.cls.options_prefix))
    foreign = {
        _backend_prefix(name)
        for kind in ("storage", "kv")
        for name in plugins.installed(kind)
        if name != chosen[kind].name
    }
    warnings = _unknown_key_warnings(raw, known, foreign - own, own) + short_secret_warnings(worker)
    return Config(worker, chosen["storage"], chosen["kv"], sources, tuple(warnings))


def describe(config: Config) -> dict[str, dict[str, Any]]:
    """Every effective key with its value (secrets redacted) and its source."""
    conv = make_converter()
    out: dict[str, dict[str, Any]] = {}
    parts = [(config.worker, "")]
    for choice in (config.storage, config.kv):
        if choice.options is not None:
            parts.append((choice.options, choice.cls.options_prefix))
    for obj, prefix in parts:
        for field in attrs.fields(type(obj)):
            key = key_of(field, prefix)
            value = conv.unstructure(getattr(obj, field.name))
            if field.metadata.get("secret") and value not in ("", None):
                value = "***"
            out[key] = {"value": value, "source": config.sources.get(key, "default")}
    return dict(sorted(out.items()))
