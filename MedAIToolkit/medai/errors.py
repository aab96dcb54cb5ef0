"""Errors raised for bad input: one type, a message that names the problem and the file."""


class MedAIInputError(ValueError):
    """Input the engine cannot use (corrupt file, wrong dimensionality, NaN, ...).

    The message names the problem in words a user can act on; the original exception, if any,
    is chained as ``__cause__``.
    """


class MedAIModelError(RuntimeError):
    """A shipped model file is missing, corrupted (checksum mismatch) or incompatible."""
