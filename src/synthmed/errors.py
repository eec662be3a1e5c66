"""One exception type for every problem the user can fix.

The CLI catches :class:`SynthmedError`, prints its message on one line and exits
non-zero without a traceback. Messages name the file and the fix.
"""

from __future__ import annotations


class SynthmedError(Exception):
    """A user-facing error: bad input, missing file, refused overwrite, ..."""

    exit_code = 2
