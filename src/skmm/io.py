"""Safe file input and output: atomic writes, and array loading that never unpickles.

Arrays are read from ``.npy`` (memory-mapped), ``.npz`` and ``.safetensors`` only; the format
is recognized by its magic bytes, not its name, so a pickle renamed to ``.npy`` is refused
with a clear message instead of being executed or failing deep inside numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_MARK = b"\x80"
BINARY_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".pkl", ".pickle", ".bin")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    A crash mid-write leaves the old file (or none), never a truncated one. The file gets
    the mode a plain ``open`` would give it (0o666 less the umask, e.g. 0o644 under 022), not
    the temporary file's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _umask() -> int:
    """The process's umask (set to the stricter 0o077 for the instant it is read)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def hold_lock(path: str | os.PathLike[str], *, wait: bool = True) -> int | None:
    """An open descriptor holding an exclusive advisory lock (``fcntl.flock``) on ``path``: a
    directory, or a file created if missing. Closing it, or the process ending, releases it.

    None where advisory locks are unavailable (Windows, some network file systems): the
    caller goes on unguarded. With ``wait=False`` a lock held elsewhere raises
    :class:`BlockingIOError` instead of waiting for it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return None
    path = Path(path)
    if path.is_dir():
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(handle)
        raise
    except OSError:  # the file system has no flock
        os.close(handle)
        return None
    return handle


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold :func:`hold_lock` on ``path`` for the block, waiting for it if another holds it."""
    handle = hold_lock(path)
    try:
        yield
    finally:
        if handle is not None:
            os.close(handle)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write strict JSON atomically (non-finite floats must already be replaced)."""
    with atomic_write(path, "w") as stream:
        json.dump(payload, stream, indent=2, allow_nan=False)
        stream.write("\n")


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as .npy atomically."""
    with atomic_write(path) as stream:
        np.save(stream, np.asarray(array), allow_pickle=False)


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Write named arrays as .npz atomically."""
    with atomic_write(path) as stream:
        np.savez(stream, **arrays)


def sniff_format(path: Path) -> str:
    """'npy', 'npz', 'safetensors' or 'text' from the file's first bytes; errors otherwise."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an array file")
    with open(path, "rb") as stream:
        head = stream.read(16)
    if not head:
        raise ValueError(f"{path} is empty")
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        if zipfile.is_zipfile(path) and _zip_holds_pickle(path):
            raise ValueError(
                f"{path} is a zip archive holding pickled data (e.g. a torch .pt file); "
                "skmm never loads pickles: save arrays as .npy, .npz or .safetensors"
            )
        return "npz"
    if head.startswith(PICKLE_PROTOCOL_MARK):
        raise ValueError(
            f"{path} is a Python pickle; skmm never loads pickles because they can run code. "
            "Save the array with numpy.save(..., allow_pickle=False) or safetensors"
        )
    if len(head) >= 9:
        header_size = struct.unpack("<Q", head[:8])[0]
        if head[8:9] == b"{" and 0 < header_size < 100 * 2**20:
            return "safetensors"
    return "text"


def _zip_holds_pickle(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith(".pkl") or name.endswith("/data.pkl") for name in archive.namelist()
        )


def load_array(
    path: str | os.PathLike[str], key: str | None = None, *, mmap: bool = True
) -> np.ndarray:
    """Load one array from .npy/.npz/.safetensors (or a text file of numbers), never unpickling.

    ``key`` names the array inside an .npz or .safetensors file; it may be omitted when the
    file holds exactly one array. ``.npy`` files are memory-mapped when ``mmap``.
    """
    path = Path(path)
    kind = sniff_format(path)
    try:
        if kind == "npy":
            if key is not None:
                raise ValueError(f"{path} is a .npy file holding one array; it has no key {key!r}")
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                if _is_sparse_npz(archive.files):
                    raise ValueError(
                        f"{path} holds a scipy sparse matrix (scipy.sparse.save_npz); only a "
                        "features file may be sparse, this one must hold a dense array"
                    )
                return _pick(dict(archive.items()), key, path)
        if kind == "safetensors":
            from safetensors.numpy import load_file

            return _pick(load_file(str(path)), key, path)
        if path.suffix.lower() in BINARY_SUFFIXES:
            raise ValueError(
                f"{path} is named {path.suffix} but is not a {path.suffix} file: it lacks the "
                "format's magic bytes (corrupt, or another format renamed)"
            )
        if key is not None:
            raise ValueError(f"{path} is a text file; it has no key {key!r}")
        return _load_text(path)
    except ValueError as exc:
        message = str(exc)
        if "allow_pickle" in message or "Object arrays" in message or "Python objects" in message:
            raise ValueError(
                f"{path} holds Python objects (pickled data); skmm never loads pickles. "
                "Save plain numeric arrays instead"
            ) from None
        if "mmap length" in message or "cannot reshape" in message or "EOF" in message:
            raise ValueError(f"{path} is truncated or corrupt: {message}") from None
        raise
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} could not be read (truncated or corrupt?): {exc}") from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":
            raise ValueError(f"{path} is not a valid safetensors file: {exc}") from None
        raise


SPARSE_NPZ_ARRAYS = {
    "csr": ("indices", "indptr"),
    "csc": ("indices", "indptr"),
    "bsr": ("indices", "indptr"),
    "coo": ("row", "col"),
    "dia": ("offsets",),
}
"""The arrays ``scipy.sparse.save_npz`` writes besides format, shape and data, by format."""


def _is_sparse_npz(names: list[str]) -> bool:
    """True for the key layout of ``scipy.sparse.save_npz``: format, shape and data arrays."""
    return {"format", "shape", "data"} <= set(names)


def load_features(path: str | os.PathLike[str], key: str | None = None) -> Any:
    """A features file: :func:`load_array`'s array, or for an .npz written by
    ``scipy.sparse.save_npz`` (recognized by its keys: format, shape, data) the sparse matrix
    as a canonical ``csr_array``. Read without pickle; a malformed one is a ValueError."""
    path = Path(path)
    if sniff_format(path) != "npz":
        return load_array(path, key)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if not _is_sparse_npz(names):
                return load_array(path, key)
            stored = archive["format"]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{path} could not be read (truncated or corrupt?): {exc}") from None
    if key is not None:
        raise ValueError(f"{path} holds one scipy sparse matrix; it has no key {key!r}")
    form = stored.item() if stored.ndim == 0 else None
    form = form.decode("ascii", "replace") if isinstance(form, bytes) else form
    if form not in SPARSE_NPZ_ARRAYS:
        raise ValueError(
            f"{path} looks like a scipy.sparse .npz file (format, shape and data arrays) but "
            f"its format is {form if form is not None else stored!r}, not one of "
            f"{', '.join(SPARSE_NPZ_ARRAYS)}"
        )
    missing = [name for name in SPARSE_NPZ_ARRAYS[form] if name not in names]
    if form == "coo" and "coords" in names:
        missing = []
    if missing:
        raise ValueError(
            f"{path} is a malformed scipy.sparse .npz file: format {form!r} needs the "
            f"array(s) {', '.join(missing)}; it holds {', '.join(sorted(names))}"
        )
    import scipy.sparse

    from .sparse import to_csr

    try:
        return to_csr(scipy.sparse.load_npz(path))
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise ValueError(f"{path} is a malformed scipy.sparse .npz file: {exc}") from None


def _pick(arrays: dict[str, np.ndarray], key: str | None, path: Path) -> np.ndarray:
    if key is None:
        if len(arrays) != 1:
            raise ValueError(
                f"{path} holds {len(arrays)} arrays ({', '.join(sorted(arrays))}); "
                "name one with a key"
            )
        return next(iter(arrays.values()))
    if key not in arrays:
        raise ValueError(f"{path} has no array {key!r}; it holds: {', '.join(sorted(arrays))}")
    return arrays[key]


def _load_text(path: Path) -> np.ndarray:
    """Whitespace- or comma-separated values: one per line gives 1-D (labels), more a table."""
    data = path.read_bytes()
    try:
        text = None if b"\x00" in data else data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise ValueError(
            f"{path} is not a recognized array format (.npy, .npz, .safetensors or text)"
        )
    lines = text.splitlines()
    rows = [line.replace(",", " ").split() for line in lines if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no values")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise ValueError(f"{path} has rows of different lengths {sorted(widths)}")
    flat = [value for row in rows for value in row]
    values: np.ndarray | None = None
    for cast in (int, float):
        try:
            values = np.asarray([cast(value) for value in flat])
            break
        except ValueError:
            continue
    if values is None:
        values = np.asarray(flat)
    return values if widths == {1} else values.reshape(len(rows), -1)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file with a clear error for missing, empty or malformed files."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON (truncated or corrupt?): {exc}") from None
