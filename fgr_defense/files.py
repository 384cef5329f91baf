"""Output files, torch-free: the one atomic writer, the output-folder lock and the writability check.

:func:`atomic_write` writes a temporary ``.<name>.<random>.tmp`` in the same folder and renames it
over the target (files get ``0o666`` less the process umask, as ``open`` would give them).
:class:`OutputLock` is the one lock on an output folder (``<out>/.lock``, held by
``deform-robust run``, ``zoo`` and training), :func:`remove_stale_temporaries` removes the
temporaries that a killed writer left behind (only names of :func:`atomic_write`'s pattern), once
the lock is held, and :func:`check_writable` checks a destination before any work.

Checkpoints (:mod:`fgr_defense.checkpoint`), logs, results, reports and figures all write through
here. Importing this module imports no ``torch``, so the harness's reports and ``--help`` stay light.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: OutputLock is a no-op
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputLock", "OutputLockedError", "OutputWriteError", "atomic_write", "atomic_write_text",
           "check_writable", "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

#: The names of :func:`atomic_write`'s temporaries: ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")``
#: (mkstemp's 8 random characters are lowercase letters, digits and ``_``).
_TMP_PREFIX, _TMP_SUFFIX = ".", ".tmp"
_TMP_PATTERN = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (else by setting it back at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temporary file in the same folder, then rename it over ``path``.

    A reader never sees a half-written file, and a crash leaves the previous file intact.
    The one atomic-write mechanism of the repository (checkpoints, logs, results, figures).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(p, lambda fh: fh.write(b"hi"))
        >>> p.read_bytes(), p.stat().st_mode & 0o777 == 0o666 & ~_umask()
        (b'hi', True)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OutputWriteError(f"{str(path)!r}: could not write ({err.strerror or err}); check that its folder is "
                               "writable") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are ordinary files, as open() makes them
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and _is_write_failure(err)):
            reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:160]
            raise OutputWriteError(f"{str(path)!r}: could not write ({reason}); check that the disk is not full "
                                   "and the folder is writable (the previous file, if any, is intact)") from None
        raise


class OutputWriteError(OSError):
    """An output file could not be written (a full disk, a read-only folder); the message names the file."""


def _is_write_failure(err: RuntimeError) -> bool:
    """torch.save's C++ writer reports a full disk as a RuntimeError ("unexpected pos", "file write failed")."""
    text = str(err)
    return any(s in text for s in ("unexpected pos", "PytorchStreamWriter", "file write failed"))


def check_writable(path: str | Path, flag: str, folder: bool) -> None:
    """Check, before any work, that ``path`` (a folder to write into, or a file) can be written.

    A missing folder is fine when its nearest existing parent is a writable folder (it is
    created when written). Nothing is left behind.

    Raises:
        ValueError: one line naming ``flag``, what was expected and what is there.

    Example:
        >>> import tempfile
        >>> base = Path(tempfile.mkdtemp())
        >>> check_writable(base / "new" / "sub", "--out", folder=True)
        >>> _ = (base / "f").write_text("x")
        >>> check_writable(base / "f" / "sub", "--out", folder=True)
        Traceback (most recent call last):
        ...
        ValueError: --out: expected a folder to write into, got ... (... is a file, not a folder)
    """
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"{flag}: expected a folder to write into, got the file {str(p)!r}")
    if not folder and p.is_dir():
        raise ValueError(f"{flag}: expected a file to write, got the folder {str(p)!r}")
    existing = p if folder else p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag}: expected a folder to write into, got {str(p)!r} ({str(existing)!r} is a file, "
                         "not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".deform-robust-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
        if not folder and p.exists():
            with open(p, "ab"):
                pass
    except OSError as err:
        raise ValueError(f"{flag}: expected a writable destination, got {str(p)!r} "
                         f"({err.strerror or type(err).__name__})") from None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries a killed :func:`atomic_write` left in ``folder`` (not recursive).

    Only files named as :func:`atomic_write` names them (``.<name>.<8 random>.tmp``) are
    removed; call it while holding the folder's :class:`OutputLock`, so that no live writer
    owns them. Returns the removed paths (each is logged).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".model.pt.k3j_x9a2.tmp").write_bytes(b"half"), (d / "keep.tmp").write_bytes(b"")
        >>> [p.name for p in remove_stale_temporaries(d)], sorted(p.name for p in d.iterdir())
        (['.model.pt.k3j_x9a2.tmp'], ['keep.tmp'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if _TMP_PATTERN.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
            except FileNotFoundError:  # pragma: no cover - gone meanwhile
                continue
            removed.append(p)
            logger.warning("removed %s, a temporary file left by an interrupted write", p)
    return removed


class OutputLockedError(RuntimeError):
    """Another process holds the output folder."""


class OutputLock:
    """An exclusive ``fcntl`` lock on ``<out>/.lock`` (context manager; a no-op where fcntl is missing).

    The one lock of an output folder: ``deform-robust run`` and training hold it for the whole
    run, so a second process on the same folder stops at once with a message naming the
    folder and the holder's pid.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with OutputLock(d):
        ...     try:
        ...         OutputLock(d).acquire()
        ...     except OutputLockedError as err:
        ...         print(str(err).split(":")[0])
        output folder ...
        >>> (d / ".lock").exists()  # removed on release: no debris
        False
    """

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if fcntl is None:  # pragma: no cover - not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the file may be removed by a run that finishes between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputLockedError(
                        f"output folder {str(self.path.parent)!r}: another run (pid {holder}) is writing to it; "
                        "wait for it to finish or choose another --out") from None
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file that its holder had just removed: lock the current one
        else:  # pragma: no cover - three runs finishing in a row
            raise OutputLockedError(f"output folder {str(self.path.parent)!r}: its lock keeps changing; retry")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (no debris), then close it, which releases the flock."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "log" / "a.json"
        >>> atomic_write_text(p, '{"epoch": 1}')
        >>> p.read_text()
        '{"epoch": 1}'
    """
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
