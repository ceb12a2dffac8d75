"""Crash-safe file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from batude.errors import BatudeError

__all__ = ["atomic_path", "check_parent", "write_text_atomic"]


def check_parent(path: str | os.PathLike) -> Path:
    """The folder ``path`` will be written into; raises when it does not exist."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise BatudeError(f"cannot write {target}: folder {folder} does not exist; create it first")
    return folder


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
        yield Path(tmp)
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


