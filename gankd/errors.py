"""The exceptions a user can act on: bad input, bad options, bad files, and how a run ended.

The CLI catches :class:`GankdError` and prints one line, ``gankd: error: <message>``, and exits
non-zero (2 for :class:`UsageError`, as argparse does; 75 for :class:`FolderBusy`; 130 for
:class:`RunInterrupted`); anything else is a bug in gankd and keeps its traceback.
"""


EXIT_USAGE, EXIT_BUSY, EXIT_INTERRUPTED = 2, 75, 130  # besides 1 for every other GankdError


class GankdError(Exception):
    """A user-facing error: the message names the file or option and what is wrong with it."""


class UsageError(GankdError):
    """An option or config value of the wrong type or out of range (exit status 2)."""


class FolderBusy(GankdError):
    """Another live gankd process holds the run folder (exit status 75, EX_TEMPFAIL: try again
    once it ends). Not a failure of the run's options, so a sweep waits for it instead."""


class RunInterrupted(GankdError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first."""


class RunDiverged(GankdError):
    """A loss became NaN/Inf or the critic exploded; the last good checkpoint is kept."""
