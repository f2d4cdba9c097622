"""Exceptions users catch. Each carries a one-line, human-readable reason."""


class SlimError(Exception):
    """Base class for slim-rt errors."""


class BitstreamError(SlimError, ValueError):
    """A .slim bitstream is malformed, truncated or corrupted."""


class ModelMismatchError(SlimError, ValueError):
    """A .slim bitstream was written by a different model than the one decoding it."""


class ModelLoadError(SlimError, OSError):
    """A model could not be found or loaded (missing directory, offline hub id, bad files)."""


class ResourceLimitError(SlimError, ValueError):
    """An image or bitstream is within the format but over a caller-set budget (e.g. Decoder.max_pixels)."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none
    (for one-line errors built from third-party exceptions)."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__
