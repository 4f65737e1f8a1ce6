"""Range checks of configuration fields: the one attrs validator every options class uses."""

from __future__ import annotations

from typing import Any

import attrs


def at_least(minimum: int) -> Any:
    """An attrs validator: the value is an integer not below ``minimum``."""

    def check(_instance: Any, _attribute: attrs.Attribute, value: int) -> None:
        if value < minimum:
            raise ValueError(f"expected an integer of at least {minimum}, got {value!r}")

    return check
