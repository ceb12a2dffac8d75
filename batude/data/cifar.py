"""CIFAR-10 "python version" batches, read with a restricted unpickler.

The official ``cifar-10-python.tar.gz`` extracts to ``cifar-10-batches-py/`` with ``data_batch_1``
.. ``data_batch_5`` (50000 training images) and ``test_batch`` (10000): pickled dicts whose
``b"data"`` is a uint8 N x 3072 array (1024 red, 1024 green, 1024 blue values, row-major) and whose
``b"labels"`` is a list of N ints in 0..9.

Pickles can run code on load. These files are unpickled by :class:`_SafeUnpickler`, which resolves
only the globals a numpy-array-in-a-dict needs: ``numpy.ndarray``, ``numpy.dtype``, the array
rebuilders ``_reconstruct`` / ``_frombuffer`` (under ``numpy.core`` as written by numpy 1 and
``numpy._core`` as written by numpy 2), and ``_codecs.encode`` restricted to latin-1 (how protocol-2
pickles from Python 3 store bytes). Anything else is refused with a :class:`BatudeError`.
"""

from __future__ import annotations

import codecs
import importlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batude.errors import BatudeError

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "safe_unpickle"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_SUBDIR = "cifar-10-batches-py"
_FIX = "re-extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"

Split = tuple[torch.Tensor, torch.Tensor]


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to latin-1, the only codec protocol-2 pickles use for bytes."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return codecs.encode(obj, "latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    core = None
    for name in ("numpy._core", "numpy.core"):
        try:
            core = importlib.import_module(name + ".multiarray"), importlib.import_module(name + ".numeric")
            break
        except ImportError:
            continue
    if core is None:  # pragma: no cover - every numpy has one of the two
        raise BatudeError("cannot locate numpy's array rebuilders; reinstall numpy")
    multiarray, numeric = core
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for prefix in ("numpy._core", "numpy.core"):
        allowed[(prefix + ".multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[(prefix + ".numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _SafeUnpickler._allowed is None:
            _SafeUnpickler._allowed = _allowed_globals()
        obj = _SafeUnpickler._allowed.get((module, name))
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` (``encoding="bytes"``) allowing only dicts, lists, scalars and numpy arrays.

    Raises :class:`BatudeError` if the file references any other global (it could run code) or
    cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except _Refused as err:
        raise BatudeError(
            f"{path} is not a plain data pickle: it references {err.what}, which batude refuses to load "
            f"(a data file must not run code); {_FIX}"
        ) from None
    except OSError as err:
        raise BatudeError(f"cannot read {path}: {err.strerror or err}; {_FIX}") from None
    except Exception as err:  # corrupt pickles fail in many ways; the unpickler is restricted
        raise BatudeError(f"cannot unpickle {path} ({type(err).__name__}: {err}); it is corrupt, {_FIX}") from None


def _get(batch: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise BatudeError(f"CIFAR-10 batch has no {key!r} entry (keys: {sorted(map(str, batch))}); {_FIX}")


def _read_batch(path: Path) -> Split:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 N)."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise BatudeError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict; {_FIX}")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BatudeError(f"{path}: 'data' is a {what}, expected uint8 N x 3072; {_FIX}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise BatudeError(f"{path}: 'labels' is not a list of ints; {_FIX}") from None
    if labels.shape != (data.shape[0],):
        raise BatudeError(f"{path} has {data.shape[0]} images but {labels.size} labels; {_FIX}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise BatudeError(f"{path} has labels outside 0..9 (min {labels.min()}, max {labels.max()}); {_FIX}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _resolve(root: Path) -> Path:
    if not (root / _TRAIN_FILES[0]).is_file() and (root / _SUBDIR / _TRAIN_FILES[0]).is_file():
        root = root / _SUBDIR
    missing = [n for n in (*_TRAIN_FILES, _TEST_FILE) if not (root / n).is_file()]
    if missing:
        raise BatudeError(
            f"CIFAR-10 batches not found in {root} (missing {', '.join(missing)}); "
            f"{_FIX} and pass its {_SUBDIR} folder as --data-dir"
        )
    return root


def load_cifar10(root: str | os.PathLike) -> tuple[Split, Split]:
    """Read ``((train_images, train_labels), (test_images, test_labels))`` from CIFAR-10 batches.

    ``root`` is the ``cifar-10-batches-py`` folder or its parent. Images: uint8 N x 3 x 32 x 32
    (RGB, 0..255); labels: int64 N (0..9). The real files give 50000 train and 10000 test images.
    """
    root = _resolve(Path(root))
    parts = [_read_batch(root / name) for name in _TRAIN_FILES]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test = _read_batch(root / _TEST_FILE)
    log.info("loaded CIFAR-10 from %s: %d train, %d test images", root, len(train[1]), len(test[1]))
    return train, test
