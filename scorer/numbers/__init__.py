"""The number reader: one field (a number written on one line) per image -> a digit string.

- ``field``: decode, set polarity, flatten light, stretch contrast, straighten, find the ink;
- ``lines``: remove printed form lines (boxes, combs, underlines, ruled and squared paper);
- ``components`` and ``runs``: connected pieces of ink (numpy only);
- ``segments``: pieces -> atoms -> candidate digits, normalized as single digits are;
- ``decode``: the cheapest reading by dynamic programming, within ``--length``;
- ``reader``: one field end to end, split around the model so workers batch it;
- ``length``: the ``--length`` bounds and a job's NumberMode.
"""

from scorer.numbers.decode import Digit
from scorer.numbers.length import Length, NumberMode, parse_length
from scorer.numbers.reader import (
    FieldCut,
    PreparedField,
    Reading,
    cut_field,
    prepare_field,
    read_cut,
)

__all__ = ["Digit", "FieldCut", "Length", "NumberMode", "PreparedField", "Reading", "cut_field",
           "parse_length", "prepare_field", "read_cut"]
