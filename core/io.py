"""Atomic writes shared by every writer: a crash never leaves a half-written file under the final name.

A writer makes a temporary file beside its final name (:func:`temporary_beside`), writes it, and :func:`commit` s it
(fsync, then rename over the final name) or :func:`discard` s it; :func:`atomic_output` does the three for a block.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def temporary_beside(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A new, empty temporary file in ``path``'s folder (hidden, named after it), with the usual permissions; a folder
    that is missing or cannot be written is a :class:`~keyface.core.errors.KeyfaceError`."""
    from .errors import KeyfaceError

    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise KeyfaceError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a user's file gets the usual permissions
    finally:
        os.close(fd)
    return tmp


def commit(tmp: str, path: str | os.PathLike) -> None:
    """Make a finished temporary file durable and give it its final name (atomically replacing what was there)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def discard(tmp: str | None) -> None:
    """Remove a temporary file that will not be committed (gone already is fine)."""
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp"):
    """``with atomic_output(path) as tmp:`` write ``tmp``; it becomes ``path`` when the block ends normally and is
    removed when it raises (Ctrl-C included)."""
    from .errors import KeyfaceError

    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        commit(tmp, path)
    except OSError as exc:  # a full disk, a folder gone: nothing under the final name, and a clear message
        discard(tmp)
        raise KeyfaceError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        discard(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


LOCK_NAME = ".keyface.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "render"):
    """``with folder_lock(out):`` — this process is the only keyface job writing into ``folder`` (an advisory lock on
    ``folder/.keyface.lock``, released by the system when the process ends, even by kill -9). A second job asking for
    the same folder gets a :class:`~keyface.core.errors.KeyfaceError` naming the process that holds it."""
    from .errors import KeyfaceError

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise KeyfaceError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise KeyfaceError(f"another keyface {what} is writing into {folder} (process {holder}): wait for it to "
                               "finish, or write into another folder")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike, names) -> int:
    """Remove the temporary files :func:`temporary_beside` made for ``folder/NAME`` (each of ``names``) that a killed
    process left behind — only while holding :func:`folder_lock`, when no other job can be writing them. One listing
    of the folder; returns how many were removed."""
    prefixes = tuple(f".{name}." for name in names)
    removed = 0
    for p in Path(folder).glob(".*"):
        if p.name.startswith(prefixes) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
