"""One exception type for every problem a user can fix (bad input, bad option, bad file).

The CLI catches it and prints one line, ``gankd: error: <message>``, and exits non-zero; anything
else is a bug in gankd and keeps its traceback.
"""


class GankdError(Exception):
    """A user-facing error: the message names the file or option and what is wrong with it."""
