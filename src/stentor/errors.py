"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class StentorError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent config.

    The message must name the problem and, where there is one, the fix.
    """
