"""Files gankd writes: crash-safe replacement of a file, and one owner per run folder.

A file is either the old one or the complete new one, never half; a write that fails (disk full,
read-only file system, no permission) ends with one line naming the file and keeps the old one.
A run folder is written by one process at a time: an advisory lock that the OS drops when the
owner exits, however it exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from gankd.errors import FolderBusy, GankdError

LOCK_NAME = ".gankd.lock"  # in every run folder; holds the owner's pid


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256: what a cache is keyed by when it must survive a copy or a git clone
    (which give every file a new modification time)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder: flush, fsync,
    rename over the old file, fsync the folder. A crash at any moment leaves the old or the new.

    The new file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not
    the 0600 of the temporary file. An ``OSError`` becomes a :class:`GankdError` naming ``path``;
    the old file is then untouched and no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise GankdError(f"{path}: is a folder; name a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(path: Path, exc: OSError) -> GankdError:
    kept = "; the previous file is unchanged" if path.exists() else ""
    return GankdError(f"{path}: cannot write ({exc.strerror or exc}){kept}")


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which would briefly change it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS): set and restore
    os.umask(mask)
    return mask


@contextlib.contextmanager
def owned_folder(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock (``flock`` on ``folder/.gankd.lock``) until the
    block ends. A folder another process holds is refused with its pid; the OS releases the lock
    when the holder exits, even by SIGKILL, so a crashed run never leaves its folder locked."""
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileExistsError:
        raise GankdError(f"{folder}: is a file; a run folder (--out) must be a folder") from None
    except NotADirectoryError:
        raise GankdError(f"{folder}: part of this path is a file; a run folder (--out) must be a folder") from None
    except OSError as exc:
        raise GankdError(f"{folder}: cannot create the run folder's lock ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise GankdError(f"{folder}: cannot lock the run folder ({exc.strerror or exc})") from None
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{folder}: in use by another gankd run (pid {holder}); wait for it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new owner)
