"""Defensive redaction of configured secret values in anything that leaves the process.

Backends promise never to put a secret in an error message, and the code never logs one;
this is the belt to those braces: log lines, ``/readyz`` bodies and error answers pass
through a :class:`Redactor` built from the configured secret values.

A secret is masked where it stands as a whole token: an occurrence is replaced only when
the characters around it are not letters or digits (a secret that itself begins or ends
with punctuation is bounded by that punctuation). With an S3 secret key ``a``, the words
``timestamp`` and ``warn`` stay intact while ``key=a;`` becomes ``key=***;``; a
dictionary-word secret such as the Redis password ``redis`` is masked wherever it stands
as a word, also where the word means something else (the backend name): the price of
never showing it. Mapping keys (the field names of a log line) are never changed, so a
redacted log line is the same valid JSON object with its values masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from zephyr_edge.settings.fields import Config

MASK = "***"
#: One letter or digit (any script): what a secret must not touch to be masked.
_WORD_CHAR = r"[^\W_]"
#: Types a log line carries as they are (everything else is masked as its ``str``).
_PLAIN = (bool, int, float, type(None))


def _pattern(secret: str) -> str:
    """``secret`` as a regular expression matching it where no letter or digit touches it."""
    body = re.escape(secret)
    if secret[0].isalnum():
        body = f"(?<!{_WORD_CHAR})" + body
    if secret[-1].isalnum():
        body += f"(?!{_WORD_CHAR})"
    return body


class Redactor:
    """Replaces every whole-token occurrence of the given secret values by ``***``."""

    __slots__ = ("_secrets", "_regex")

    def __init__(self, secrets: Iterable[str]):
        # longest first, so that a secret containing another is masked whole
        self._secrets = tuple(sorted({str(s) for s in secrets if s}, key=len, reverse=True))
        self._regex = re.compile("|".join(_pattern(s) for s in self._secrets)) if self._secrets else None

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, text: str) -> str:
        """``text`` with every whole-token occurrence of a secret masked."""
        if self._regex is None or not any(value in text for value in self._secrets):
            return text
        return self._regex.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """``value`` with secrets masked in every string it holds (dict values, lists,
        tuples; any other object as its ``str``). Dict keys are kept as they are."""
        if self._regex is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return self.text(str(value))


def without_userinfo(url: str, mask: str | None = None) -> str:
    """``url`` without its userinfo (``user:password@``), the one URL redactor; with
    ``mask`` (e.g. :data:`MASK`), ``mask@`` stands where the userinfo was."""
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host if mask is None else f"{mask}@{host}"))


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
