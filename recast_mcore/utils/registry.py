"""One registry mechanism for every extension point (rewards, signal builders, policy losses, rollout engines).

Each extension point owns a ``Registry`` instance holding functions of ONE signature; registering a
name twice is an error, and looking up an unknown name raises with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Name -> function table for one extension point."""

    def __init__(self, kind: str, unknown_error: type[Exception] = KeyError) -> None:
        self.kind = kind
        """What is registered, for messages (e.g. ``'reward'``)."""
        self.unknown_error = unknown_error
        """Exception type raised for an unknown name."""
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding a function under ``name``; a duplicate name raises ``ValueError``."""

        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        """The function registered as ``name``; an unknown name raises listing the valid ones."""
        if name not in self._entries:
            raise self.unknown_error(f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
