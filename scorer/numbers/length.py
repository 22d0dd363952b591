"""How many digits a field may hold: `--length 5` or `--length 4-6`, and the mode of a job
that reads numbers (a leaf: no imports)."""

from __future__ import annotations

from typing import NamedTuple

MAX_DIGITS = 40  # longest reading the reader will produce, whatever --length says


class Length(NamedTuple):
    """Inclusive bounds on a reading's number of digits."""

    low: int
    high: int

    def admits(self, count: int) -> bool:
        return self.low <= count <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def parse_length(text: str) -> Length:
    """"5" -> Length(5, 5); "4-6" -> Length(4, 6). Raises ValueError with a one-line reason."""
    low, sep, high = str(text).strip().partition("-")
    try:
        bounds = Length(int(low), int(high) if sep else int(low))
    except ValueError:
        raise ValueError(f"{text!r} is not N or MIN-MAX (e.g. 5 or 4-6)") from None
    if not 1 <= bounds.low <= bounds.high <= MAX_DIGITS:
        raise ValueError(f"{text!r}: need 1 <= MIN <= MAX <= {MAX_DIGITS}")
    return bounds


class NumberMode(NamedTuple):
    """Each image is one field holding one number (`--read number`), of `length` digits."""

    length: Length | None = None

    def describe(self) -> dict:
        """What a job reads, as reports and scale-out parts record it."""
        return {"read": "number", "length": None if self.length is None else str(self.length)}
