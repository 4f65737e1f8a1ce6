"""Defensive redaction of configured secret values in anything that leaves the process.

Backends promise never to put a secret in an error message, and the code never logs one;
this is the belt to those braces: log lines, ``/readyz`` bodies and error answers pass
through a :class:`Redactor` built from the configured secret values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from zephyr_edge.config import Config

MASK = "***"


class Redactor:
    """Replaces every occurrence of the given secret values by ``***``."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]):
        # longest first, so that a secret containing another is masked whole
        self._secrets = tuple(sorted({str(s) for s in secrets if s}, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, text: str) -> str:
        """``text`` with every secret masked."""
        for value in self._secrets:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with secrets masked in every string it holds (dicts, lists, tuples)."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def secret_values(config: Config) -> tuple[str, ...]:
    """The non-empty values of every configuration field marked ``secret``."""
    found: list[str] = []
    parts: list[Any] = [config.worker, config.storage.options, config.kv.options]
    for obj in parts:
        if obj is None or not attrs.has(type(obj)):
            continue
        for field in attrs.fields(type(obj)):
            if field.metadata.get("secret"):
                value = getattr(obj, field.name)
                if value not in (None, ""):
                    found.append(str(value))
    return tuple(found)


def for_config(config: Config) -> Redactor:
    """A :class:`Redactor` masking the secrets of ``config``."""
    return Redactor(secret_values(config))
