"""Checks of a shipped ``config.json`` beyond "the worker loads it" (see support.config_problems)."""

from __future__ import annotations

from zephyr_edge.settings import config as cfg

from tests.deploy.support import raw_values, secret_keys, shipped_config

LIST_KEY = cfg.KEY_PREFIX + "REPLICAS_URLS"


def layout_problems(text: str) -> list[str]:
    """The documented layout: every value a string, except ZE_WORKER_REPLICAS_URLS (a list
    of strings); only ``ZE_WORKER_*`` keys."""
    found = []
    for key, value in raw_values(text).items():
        if not key.startswith(cfg.KEY_PREFIX) or key == cfg.CONFIG_FILE_KEY:
            found.append(f"{key} does not belong in the config file")
        elif key == LIST_KEY:
            if not (isinstance(value, list) and all(isinstance(u, str) for u in value)):
                found.append(f"{key} must be a JSON array of strings, got {value!r}")
        elif not isinstance(value, str):
            found.append(f"{key} must be a string, got {value!r}")
    return found


def placeholder_problems(text: str) -> list[str]:
    """Secrets in a shipped file are placeholders the worker refuses (or left empty)."""
    values = raw_values(text)
    found = []
    for key in sorted(secret_keys(shipped_config(text)) & set(values)):
        if values[key] and not cfg.is_placeholder(values[key]):
            found.append(f"{key} holds a value that is not a placeholder")
    return found


def warning_problems(text: str) -> list[str]:
    """Unknown keys (typos) the worker would warn about at start, placeholders replaced."""
    return list(shipped_config(text).warnings)
