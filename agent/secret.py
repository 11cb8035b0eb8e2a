"""Secrets that refuse to show themselves, and the registry that keeps them out of logs and argv."""

from __future__ import annotations

from collections.abc import Iterable

_KNOWN: set[str] = set()
# Shorter secrets could match ordinary text ("data", "postgres"): looking for them in argv would
# refuse innocent commands and redacting them would garble logs, so they are not looked for.
MIN_GUARDED = 8


class Secret:
    """A secret string whose repr and str never reveal it; `reveal()` is the one way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if self.guarded:
            _KNOWN.add(value)

    @property
    def guarded(self) -> bool:
        """Whether argv checks and log redaction look for this secret (it is long enough to)."""
        return len(self._value) >= MIN_GUARDED

    def reveal(self) -> str:
        """The secret value, for the few places that must hand it to PostgreSQL."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", self._value))


def known_secrets() -> frozenset[str]:
    """Every secret value this process has loaded."""
    return frozenset(_KNOWN)


def contains_secret(texts: Iterable[str]) -> bool:
    """True when any of the texts holds a known secret value."""
    secrets = known_secrets()
    return any(secret in text for text in texts for secret in secrets)


def redact(text: str) -> str:
    """The text with every known secret value replaced by `***`."""
    for secret in sorted(known_secrets(), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
