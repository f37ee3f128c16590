"""One check for every option that takes one of a few named values.

A wrong value fails at once with an error that names the option, the value and what is allowed:
    ValueError: norm='batchnorm' is not one of ('layernorm', 'rmsnorm', 'rmsnorm_gemma')
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_choice", "checked_choice"]


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Raise ValueError naming `name`, `value` and `allowed` unless value is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def checked_choice(name: str, allowed: tuple[str, ...]) -> property:
    """A property that accepts only one of `allowed` (stored as `_<name>`), refused as `check_choice` does."""

    def get(self) -> str:
        return getattr(self, "_" + name)

    def set(self, value: str) -> None:
        check_choice(name, value, allowed)
        setattr(self, "_" + name, value)

    return property(get, set)
