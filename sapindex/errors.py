"""User-facing errors: a one-line message naming the file or row and the reason.

The CLI turns :class:`SapIndexError` into ``error: <message>`` on stderr and exit code 2
(bad input), never a traceback. Everything that a user can cause by pointing sapindex at the
wrong thing raises this, not a library exception.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: the CLI says how to get the traceback
EXIT_BAD_INPUT = 2  # a SapIndexError: the message names the file or row and the reason
EXIT_PARTIAL = 3  # `index` stored what it could and names the inputs it could not read
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class SapIndexError(Exception):
    """Bad input or environment, explained in one line for the user.

    Raised with one argument, the message: one line naming the file or row and the reason.

    Attributes:
        exit_code (int): The CLI's exit status for it: 2 (bad input).
    """

    exit_code = EXIT_BAD_INPUT
