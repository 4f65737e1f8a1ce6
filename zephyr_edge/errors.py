"""One exception hierarchy for the whole worker.

Backends translate their client library's exceptions into these at their boundary,
keeping the original as ``__cause__`` (``raise BackendUnavailable(...) from exc``).
The HTTP layer maps them to answers in one place (``http.answers.error_response``, from
``http.app.error_middleware``); the CLI maps :class:`ConfigError` to exit status 2
(``cli.exits.USAGE``). :func:`shorten` is the one way a value is cut for a message.
"""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (ending in ``...`` when cut): the one
    way a value is shortened for an error message or a log line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ZephyrError(Exception):
    """Base class of every error the worker raises on purpose."""

    #: HTTP status this error becomes when it reaches a client.
    status = 500
    #: Stable machine-readable code, part of the JSON error body.
    code = "internal_error"


class ConfigError(ZephyrError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    code = "config_error"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class PluginNotFound(ConfigError):
    """No installed backend has the requested name."""

    code = "plugin_not_found"

    def __init__(self, kind: str, name: str, installed: list[str]):
        self.kind, self.name, self.installed = kind, name, sorted(installed)
        names = ", ".join(self.installed) or "none"
        super().__init__(
            [
                f"unknown {kind} backend {name!r}; installed: {names} "
                f"(a third-party backend registers itself in the entry-point group "
                f"'zephyr_edge.{kind}')"
            ]
        )


class BackendError(ZephyrError):
    """A storage or KV backend failed. ``backend`` names it; the cause is chained."""

    code = "backend_error"

    def __init__(self, backend: str, message: str):
        self.backend = backend
        super().__init__(f"{backend}: {message}")


class BackendUnavailable(BackendError):
    """The backend could not be reached (connection refused, timeout, DNS...)."""

    status = 503
    code = "backend_unavailable"


class NotFound(ZephyrError):
    """The requested object, key or route does not exist."""

    status = 404
    code = "not_found"


class BadRequest(ZephyrError):
    """The client sent something invalid; ``field`` names what, when known."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class Forbidden(ZephyrError):
    """Authentication or authorization failed (always 403: the agent drops logins on 401)."""

    status = 403
    code = "forbidden"


class PayloadTooLarge(ZephyrError):
    status = 413
    code = "payload_too_large"
