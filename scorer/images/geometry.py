"""Where and how big the digit goes on the model's input canvas (part of the model bundle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Geometry:
    """Where and how big the digit goes on the model's input canvas."""

    height: int = 28
    width: int = 28
    digit_box: int = 20
    centering: str = "mass"
    supersample: int = 1
    ink: str = "light"

    def __post_init__(self) -> None:
        for name in ("height", "width", "digit_box", "supersample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"geometry {name} must be a positive integer, got {value!r}")
        if self.centering not in ("mass", "box"):
            raise ValueError(f"geometry centering must be 'mass' or 'box', got {self.centering!r}")
        if self.ink not in ("light", "dark"):
            raise ValueError(f"geometry ink must be 'light' or 'dark', got {self.ink!r}")
        if self.digit_box > min(self.height, self.width) * self.supersample:
            raise ValueError("geometry digit_box must fit in the (supersampled) canvas")

    def to_manifest(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, d: dict) -> Geometry:
        """Inverse of to_manifest; unknown keys are ignored, bad values raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"geometry manifest must be a dict, got {type(d).__name__}")
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for name, value in kwargs.items():  # JSON writers may emit 28.0 for 28
            if isinstance(value, float) and value.is_integer():
                kwargs[name] = int(value)
        return cls(**kwargs)


MNIST_GEOMETRY = Geometry()
DIGITS_8X8_GEOMETRY = Geometry(height=8, width=8, digit_box=32, centering="box", supersample=4)
# The field reader's input (scorer.numbers.sequence): one number field's ink as a line, light on
# dark, this many rows and columns. Part of the bundle's contract, like the geometry above.
LINE_HEIGHT, LINE_WIDTH = 32, 256
