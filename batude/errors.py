"""The one exception type for user errors.

Library code raises :class:`BatudeError` for anything the user can fix (a bad budget string, an
unknown layer name, an impossible rank); the message says what is wrong and what to do next. The
CLI turns it into one line on stderr and a non-zero exit code.
"""


class BatudeError(Exception):
    """A user-facing error: one line saying what is wrong and what to do next."""


class Diverged(BatudeError):
    """Training diverged: the loss, or the weights, became NaN or Inf."""
