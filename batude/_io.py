"""Crash-safe file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from batude.errors import BatudeError

__all__ = ["atomic_path", "check_out_dir", "check_parent", "inside", "output_dir", "write_text_atomic"]


def check_parent(path: str | os.PathLike) -> Path:
    """The folder ``path`` will be written into; raises when it does not exist."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise BatudeError(f"cannot write {target}: {folder} is a file, not a folder; choose another output path")
    if not folder.is_dir():
        raise BatudeError(f"cannot write {target}: folder {folder} does not exist; create it first")
    return folder


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """An output folder that exists or can be created (checked without creating it, before long work).

    ``option`` names the command-line option the folder came from, for the message.
    """
    folder = Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise BatudeError(f"output folder {folder} is a file; give a folder with {option}")
        _probe_writable(folder, folder, option)
        return folder
    ancestor = next((p for p in folder.absolute().parents if p.exists()), None)
    if ancestor is None or not ancestor.is_dir():
        raise BatudeError(f"cannot create output folder {folder}: {ancestor} is a file; choose another {option}")
    _probe_writable(ancestor, folder, option)
    return folder


def _probe_writable(where: Path, folder: Path, option: str) -> None:
    """Create and remove an empty folder in ``where``: the only test that also catches read-only and
    pseudo file systems (``os.access`` says yes to root on most of them)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".batude-probe-", dir=where))
    except OSError as err:
        raise BatudeError(f"cannot write output folder {folder}: {where}: {err.strerror}; choose another {option}") from None


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create folder ``path`` (with parents) for the body; if the body fails, a folder created here is removed again when still empty."""
    folder = Path(path)
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BatudeError(f"cannot create output folder {folder}: {err.strerror}; choose another --out") from None
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def inside(folder: str | os.PathLike, name: str | os.PathLike) -> Path:
    """``folder / name`` for a ``name`` taken from a file or from user data, guaranteed to stay in ``folder``.

    Raises :class:`BatudeError` for an empty or absolute name, a ``..`` component, or a path that
    resolves (through symlinks) to ``folder`` itself or outside it. Returns the joined path, unresolved.
    """
    text = os.fspath(name)
    parts = Path(text).parts
    if not text or not parts or Path(text).is_absolute() or ".." in parts or "\0" in text:
        raise BatudeError(f"{text!r} is not a relative name inside {folder}; use a plain name without '/' at the start or '..'")
    target = Path(folder) / text
    base, resolved = Path(folder).resolve(), target.resolve()
    if base not in resolved.parents:
        raise BatudeError(f"{text!r} leads to {resolved}, outside {folder} (a symbolic link?); remove the link or choose another name")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    folder = check_parent(target)
    if target.is_dir():
        raise BatudeError(f"cannot write {target}: it is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise BatudeError(f"cannot write {target}: {err.strerror}; choose a writable output path") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as err:  # name the file the caller asked for, not the temporary
            if err.filename in (None, tmp, str(tmp)):
                err.filename = str(target)
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise BatudeError(f"cannot write {target}: {err.strerror}; choose another output path") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


