"""One exception type for every problem the user can fix.

The CLI catches :class:`SynthmedError`, prints its message on one line and exits
non-zero without a traceback. Messages name the file and the fix.
"""

from __future__ import annotations


class SynthmedError(Exception):
    """A user-facing error: bad input, missing file, refused overwrite, ..."""

    exit_code = 2


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (a scheduler's or ``kill``'s stop), so that
    the same clean-up as for Ctrl-C runs (temporary files removed, nothing half-written) before the process exits
    with 143 (128 + 15), the status that tells a scheduler it was terminated. A BaseException, like
    KeyboardInterrupt, so that handlers of ordinary errors do not swallow it."""

    exit_code = 143
