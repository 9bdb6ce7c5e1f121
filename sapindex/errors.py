"""User-facing errors: a one-line message naming the file or row and the reason.

The CLI turns :class:`SapIndexError` into ``error: <message>`` on stderr and exit code 2
(bad input), never a traceback. Everything that a user can cause by pointing sapindex at the
wrong thing raises this, not a library exception.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class SapIndexError(Exception):
    """Bad input or environment, explained in one line for the user."""

    exit_code = EXIT_BAD_INPUT
