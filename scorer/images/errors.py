"""Why an image cannot be scored: every normalization step raises these, never anything else."""


class ImageError(ValueError):
    """An input that cannot be scored; str(err) is a one-line human reason (no newlines)."""


class BlankImageError(ImageError):
    """The image holds no ink: a result on forms (an empty box), not a failure to read it."""

    def __init__(self, reason: str = "blank image: no ink found"):
        super().__init__(reason)


BLANK_REASON = str(BlankImageError())
