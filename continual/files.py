"""Writing files so that a crash never leaves half of one, reading safetensors that must match, and knowing
that a file still holds what was written.

Every file a run keeps (adapters, router state, checkpoint, CSVs, results) is written to a temporary
file beside its destination and renamed into place: a kill at any moment leaves either the old file
or the new one, never a truncated one. Saved tensors carry metadata that says what they were made
for (backbone, adapter config, labels, ...); :func:`read_checked` refuses a file whose metadata
disagrees with what the loader expects, naming the first key that differs. A run records the sha256 of
every file a reload needs (:class:`Hashes`, in ``checkpoint.json``); :func:`verify` checks them before a
load, so a flipped bit or a truncated file is one line naming the file, not a changed prediction.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from continual.errors import ContinualError, first_line


def _file_mode() -> int:
    """What a plain ``open(path, "w")`` gives a new file under this process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block has written it, rename it onto ``path``.

    If the block raises, the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # writers that make private temporary files (safetensors) would leave 0600
        tmp.replace(path)
    except OSError as exc:  # a full disk, a read-only folder: one line; the previous file stays as it was
        raise ContinualError(f"{path}: cannot write ({exc.strerror or exc}); the previous version is kept") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Save torch tensors (moved to CPU, contiguous, unshared) as safetensors with ``metadata``, atomically."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage, which state dicts of some encoders contain
    plain = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        _safetensors_write(lambda: save_file(plain, str(tmp), metadata=dict(metadata)), path)
    return path


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Path:
    """Save numpy arrays as safetensors with ``metadata``, atomically."""
    from safetensors.numpy import save_file

    plain = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    with atomic_path(path) as tmp:
        _safetensors_write(lambda: save_file(plain, str(tmp), metadata=dict(metadata)), path)
    return path


def _safetensors_write(write: Callable[[], None], path: Path) -> None:
    """safetensors reports I/O failures (a full disk) as its own error type: make them the OSError they are."""
    try:
        write()
    except SafetensorError as exc:
        raise OSError(errno.EIO, first_line(exc)) from exc


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (one line naming the file if it cannot be read)."""
    try:
        with safe_open(str(path), "np") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ContinualError(f"{path}: unreadable safetensors file ({first_line(exc)})") from exc


def read_checked(
    path: Path,
    expected: Mapping[str, str],
    framework: str = "pt",
    hint: str = "",
    upgrade: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None,
) -> dict:
    """The tensors of ``path`` (torch with ``framework='pt'``, numpy with ``'np'``) after checking its metadata.

    Every key of ``expected`` must hold the same value in the file's metadata (as ``upgrade`` brings an
    older file's metadata up to date, see :mod:`continual.migrations`); otherwise one line names the
    file, the key, both values and ``hint`` (what the file can be loaded onto).
    """
    if not path.is_file():
        raise ContinualError(f"{path}: missing")
    meta = read_metadata(path) if upgrade is None else upgrade(read_metadata(path))
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ContinualError(
                f"{path}: saved for {key}={meta.get(key)}, but this run has {key}={value}"
                + (f"; {hint}" if hint else "")
            )
    try:
        with safe_open(str(path), framework) as fh:
            return {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except (SafetensorError, OSError) as exc:
        raise ContinualError(f"{path}: unreadable safetensors file ({first_line(exc)})") from exc


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Hashes:
    """The sha256 of files as they are now, hashed again only when a file was replaced or changed since."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}  # path -> ((inode, size, mtime), sha256)

    def of(self, path: Path) -> str:
        stat = path.stat()
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        known = self._known.get(path)
        if known is None or known[0] != key:
            known = self._known[path] = (key, sha256(path))
        return known[1]


def verify(folder: Path, manifest: Mapping[str, str], within: str = "") -> None:
    """Every file of ``manifest`` (path relative to ``folder`` -> sha256; those under ``within`` only) still holds
    what was written: one line naming the first file that is missing or differs."""
    for name, recorded in manifest.items():
        if not name.startswith(within):
            continue
        path = folder / name
        if not path.is_file():
            raise ContinualError(f"{path}: missing (the run recorded it); restore it from the run's MLflow artifacts")
        found = sha256(path)
        if found != recorded:
            raise ContinualError(
                f"{path}: damaged: its sha256 is {found[:12]}..., the run recorded {recorded[:12]}... when it wrote "
                "it; restore the file from the run's MLflow artifacts"
            )


def with_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}``: several modules' state dicts in one file."""
    return {f"{prefix}{n}": t for n, t in tensors.items()}


def strip_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix``, with the prefix removed (the inverse of :func:`with_prefix`)."""
    return {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<folder>/.lock``, held while the block runs.

    The operating system releases the lock when its process ends, however it ends, so a lock left by a
    killed process never blocks. A second process (a second run into the same folder, a resume while
    the run still trains, two resumes at once) gets one line naming the holder's PID.
    """

    FILENAME = ".lock"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = (self.folder / self.FILENAME).open("a+")
        except OSError as exc:
            raise ContinualError(f"{self.folder}: cannot create the run folder ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ContinualError(
                f"{self.folder} is in use by another continual process (PID {holder}); wait for it "
                "to end, or stop it and `continual resume` the folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None
