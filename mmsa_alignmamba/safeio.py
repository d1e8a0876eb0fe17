"""Safe reading and atomic writing of the files a run touches.

Dataset pickles come from anywhere (a colleague, a download, a feature extractor), and
`pickle.load` runs whatever a pickle asks for. MMSA-format pickles only ever need numpy
arrays, builtin containers and scalars, so we unpickle with an allow-list of globals and
refuse everything else before it can run. Every output (CSV, JSON, checkpoint, plot) is
written to a temporary file in the destination folder and renamed into place, so a run
killed mid-write never leaves a truncated file behind.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
from pathlib import Path

from .errors import DataFileError

__all__ = ["UnsafePickleError", "safe_pickle_load", "atomic_write", "atomic_write_text"]


class UnsafePickleError(DataFileError):
    """A pickle asked for a global outside the allow-list; nothing it referenced was run."""


# (module, name) pairs an MMSA-format pickle may reference. numpy's reconstruct helpers moved
# between numpy.core and numpy._core in numpy 2, so both spellings are listed.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # numpy object arrays of str pickle their bytes through this
}
# numpy dtype classes (numpy.dtypes.Float32DType, ...) are pickled by name in numpy >= 1.25.
_ALLOWED_MODULES_BY_PREFIX = ("numpy.dtypes",)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or module.startswith(_ALLOWED_MODULES_BY_PREFIX):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refused to load {self.source}: it references '{module}.{name}', which an MMSA data "
            "pickle never needs (only numpy arrays, dicts, lists, strings and numbers are allowed)"
        )


def safe_pickle_load(path: str | os.PathLike):
    """Load an MMSA-format pickle with the allow-list unpickler; clear errors for every failure."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    try:
        with open(path, "rb") as f:
            unpickler = _RestrictedUnpickler(f)
            unpickler.source = str(path)
            return unpickler.load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError) as e:
        raise DataFileError(f"cannot read {path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def safe_pickle_loads(data: bytes, source: str = "<bytes>"):
    """The same allow-list unpickler for in-memory bytes (used where a host API hands us a file object)."""
    unpickler = _RestrictedUnpickler(io.BytesIO(data))
    unpickler.source = source
    return unpickler.load()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file object for a temp file beside `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
