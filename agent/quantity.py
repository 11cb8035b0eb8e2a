"""Kubernetes quantities of bytes (`10Gi`, `600Mi`): a volumeClaimTemplate's storage request, as the
agent reads PGSFS_VOLUME_SIZE and the emulator reads the manifest."""

from __future__ import annotations

import math
import re
from fractions import Fraction


class QuantityError(ValueError):
    """A value is not a Kubernetes quantity of bytes."""


# Kubernetes quantity suffixes for bytes: binary (powers of 1024) and decimal (powers of 1000).
_QUANTITY_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([KMGTPE]i|[kMGTPE])?")


def parse_quantity(value: str | int) -> int:
    """A Kubernetes quantity of bytes (`10Gi`, `600Mi`, `1G`, `1.5Gi`, `1024`) as a positive int.

    Fractions round up to a whole byte, as the API server rounds storage requests.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise QuantityError(f"invalid quantity {value!r}: expected a string like 10Gi or an int")
    if isinstance(value, int):
        amount = value
    else:
        m = _QUANTITY_RE.fullmatch(value.strip())
        if m is None:
            raise QuantityError(
                f"invalid quantity {value!r}: expected a number with an optional suffix"
                " (binary Ki Mi Gi Ti Pi Ei, decimal k M G T P E), e.g. 10Gi or 600Mi")
        amount = math.ceil(Fraction(m.group(1)) * _QUANTITY_SUFFIXES[m.group(2) or ""])
    if amount <= 0:
        raise QuantityError(f"invalid quantity {value!r}: must be more than 0 bytes")
    return amount
