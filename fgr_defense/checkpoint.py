"""Model checkpoints: one self-describing, atomically written file per model.

Format (a plain ``dict`` loadable with ``torch.load(path, weights_only=True)``)::

    {
        "format": "deform-robust/1",
        "arch": {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28},
        "state_dict": {...},           # model weights
        "meta": {...},                 # JSON-able: dataset, defense, epoch, metrics, ...
        # the Trainer adds optimizer/scheduler/RNG state under "trainer" for resuming
    }

Output folders:
    :func:`atomic_write` is the one atomic writer (a temporary ``.<name>.<random>.tmp`` in the
    same folder, renamed over the target; files get ``0o666`` less the process umask, as
    ``open`` would give them). :class:`OutputLock` is the one lock on an output folder
    (``<out>/.lock``, held by ``deform-robust run`` and by training), and
    :func:`remove_stale_temporaries` removes the temporaries that a killed writer left
    behind (only names of :func:`atomic_write`'s pattern), once the lock is held.

Importing this module does not import ``torch`` (the harness's reports use the atomic writers).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

if TYPE_CHECKING:  # torch is imported where it is used: the atomic writers stay torch-free
    import torch
    from torch import nn

__all__ = ["ARCH_KEYS", "CHECKPOINT_FORMAT", "OutputLock", "OutputLockedError", "atomic_save", "atomic_write",
           "atomic_write_text", "check_writable", "load_checkpoint", "load_model", "model_from_checkpoint", "remove_stale_temporaries",
           "save_model"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deform-robust/1"
#: The keys of ``arch`` (the arguments of :func:`~fgr_defense.models.build_model`).
ARCH_KEYS = ("name", "in_channels", "num_classes", "size")

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
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
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


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`atomic_write`).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.pt"
        >>> import torch
        >>> atomic_save({"w": torch.ones(2)}, p)
        >>> torch.load(p, weights_only=True)["w"]
        tensor([1., 1.])
    """
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_model(
    model: nn.Module, path: str | Path, arch: dict[str, Any] | None, meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` with its architecture description so :func:`load_model` can rebuild it.

    ``arch`` is ``{"name", "in_channels", "num_classes", "size"}`` of :func:`build_model`, or
    None for a model this package cannot rebuild (then load ``obj["state_dict"]`` yourself).
    ``extra`` entries are stored at the top level (the Trainer stores ``"trainer"``).

    Example:
        >>> import tempfile, os
        >>> from fgr_defense.models import SmallCNN
        >>> arch = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_model(SmallCNN(), os.path.join(d, "m.pt"), arch, {"defense": "Standard"})
        ...     model, meta = load_model(os.path.join(d, "m.pt"))
        >>> type(model).__name__, meta["defense"]
        ('SmallCNN', 'Standard')
    """
    if arch is not None:
        missing = set(ARCH_KEYS) - set(arch)
        if missing:
            raise ValueError(f"arch: missing keys {sorted(missing)}; got {sorted(arch)}")
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    obj: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "arch": dict(arch) if arch is not None else None,
                           "state_dict": state,
                           "meta": dict(meta or {})}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for missing, broken or foreign files.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty, truncated or not a ``torch.save`` file ("is not a
            readable checkpoint (truncated?): <reason>"); a readable file of another format
            ("is not a deform-robust checkpoint"); or a checkpoint without ``state_dict``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "broken.pt"
        >>> _ = p.write_text("not a checkpoint")
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        ValueError: checkpoint '...broken.pt' is not a readable checkpoint (truncated?): ...
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError,
            IndexError, UnicodeDecodeError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable checkpoint (truncated?): {_reason(err, path)}"
        ) from err
    return _checked(obj, path)


def _checked(obj: Any, path: Path) -> dict[str, Any]:
    """``obj`` (a loaded ``path``) if it is a deform-robust checkpoint with weights; else ValueError."""
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint: {str(path)!r} is not a deform-robust checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    if not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"checkpoint {str(path)!r}: missing the model weights ('state_dict')")
    return obj


def _reason(err: BaseException, path: Path) -> str:
    """A one-line reason: the exception's type and first sentence, and the file's size."""
    text = " ".join(str(err).split())
    first = text.split(". ")[0][:160]
    size = path.stat().st_size
    what = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return f"{what} ({size} bytes{', empty file' if size == 0 else ''})"


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, meta)``.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_checkpoint`; also a missing or
            incomplete ``arch`` (the missing keys are named) or weights that do not fit.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location), path)


def model_from_checkpoint(obj: dict[str, Any], path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` on a checkpoint dict already loaded from ``path`` (named in errors).

    Raises:
        ValueError: as :func:`load_model`, for everything after reading the file.
    """
    obj = _checked(obj, Path(path))
    arch = obj.get("arch")
    if not isinstance(arch, dict):
        raise ValueError(
            f"checkpoint: {str(path)!r} stores no architecture (a custom model); rebuild the model "
            "and load load_checkpoint(path)['state_dict'] into it"
        )
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: 'arch' is missing keys {missing}")
    from .models import build_model

    model = build_model(arch["name"], arch["in_channels"], arch["num_classes"], arch["size"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint {str(path)!r}: its 'state_dict' does not fit the {arch['name']!r} "
                         f"model ({first})") from err
    model.eval()
    return model, dict(obj.get("meta", {}))


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel wrappers."""
    from torch import nn

    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
