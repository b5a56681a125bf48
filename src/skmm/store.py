"""On-disk store of sketched per-sample gradients: an N × m float32 matrix written batch by batch.

Layout: a directory with ``manifest.json``, shards ``shard-00000.npy``, ... (float32, (rows, m))
and, when labels are known, ``labels-00000.npy``, ... (int64, (rows,)). Every shard but the last
holds ``shard_rows`` rows, so the files never depend on how the caller batched its rows. Files
are written atomically (temp file, fsync, rename), shards before the manifest that lists them
with their sha256: a killed run resumes from its last complete shard and ends byte-identical to
an uninterrupted one. While a store is written, its manifest may also list a *partial* shard:
the first rows of the first shard not yet complete, saved under that shard's own file name
(:meth:`SketchStore.set_partial`, what :class:`skmm.gradients.sinks.StoreSink` does every
minute), so that a run killed inside a long shard keeps them. The whole shard, written later
under the same name, replaces it, and a complete manifest never lists one: the final files do
not depend on when partial shards were saved.

A store made for another request, or with a file failing its checksum, is refused with a
message naming the problem; nothing is unpickled, and the manifest can only name plain shard
files inside the store directory. One writer at a time: a writer holds an exclusive ``flock``
on the store directory until it finishes or is closed (the kernel drops it when the process
dies), and a second writer is refused at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write, hold_lock, read_json, write_json
from .memory import check_memory

STORE_VERSION = 2
"""Version 2: shards hold the exact-arithmetic sketch (:mod:`skmm.sketch`, discrete-normal
Gaussian map). Version 1 stores (float32 products, ``torch.randn`` map) are read, not resumed."""
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
FORMAT = "skmm-sketch-store"

_SHARD_NAME = re.compile(r"^(shard|labels)-\d{5}\.npy$")
_TEMP_NAME = re.compile(r"^\.(manifest\.json|(shard|labels)-\d{5}\.npy)\..+\.tmp$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_SHARDS = 100_000
_FEATURE_DTYPE = np.dtype("<f4")
_LABEL_DTYPE = np.dtype("<i8")
_SHARD_KEYS = ("index", "start", "rows", "file", "sha256", "labels_file", "labels_sha256")
_MANIFEST_KEYS = ("format", "version", "state", "identity", "shard_rows", "n_rows", "shards")
PARTIAL = "partial"  # optional manifest key, only while writing: the partial shard's entry
_ABSENT = object()


class StoreError(ValueError):
    """A store that is corrupt, incomplete, or made for a different request; the message names
    the problem and the path."""


def is_store(path: str | os.PathLike[str]) -> bool:
    """True when path is a directory holding manifest.json."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST).is_file()


class SketchStore:
    """A sketch store opened for writing (:meth:`open_for_writing`) or reading (:meth:`open`).

    Reading: ``features`` (a lazily read (N, m) :class:`StoreArray`), ``labels`` ((N,) int64
    or None), ``shape``, ``len(store)``, ``metadata`` (the run's identity and engine) and
    :meth:`load_features` (the whole matrix in memory).
    """

    path: Path
    identity: dict[str, Any]
    shard_rows: int
    rows_done: int
    complete: bool
    metadata: dict[str, Any]
    sketch_dim: int
    blocks: int
    width: int

    def __init__(self, path: Path, manifest: dict[str, Any], *, writable: bool) -> None:
        """Private: use :meth:`open_for_writing` or :meth:`open`."""
        self.path = path
        self.identity = manifest["identity"]
        self.shard_rows = manifest["shard_rows"]
        self.complete = manifest["state"] == "complete"
        self.metadata = manifest["metadata"]
        self.sketch_dim = self.identity["sketch_dim"]
        self.blocks = self.identity.get("blocks", 1)  # sketches per example, side by side
        self.width = self.sketch_dim * self.blocks
        self._shards: list[dict[str, Any]] = list(manifest["shards"])
        self._partial: dict[str, Any] | None = manifest.get(PARTIAL)
        self.rows_done = sum(shard["rows"] for shard in self._shards)
        listed = self._shards or ([self._partial] if self._partial else [])
        self._has_labels: bool | None = listed[0]["labels_file"] is not None if listed else None
        self._writable = writable
        self._broken = False
        self._closed = False
        self._pending_features: list[np.ndarray] = []
        self._pending_labels: list[np.ndarray] = []
        self._pending_rows = 0
        self._pending_entry: dict[str, Any] | None = None
        self._unlock: weakref.finalize | None = None
        self._array: StoreArray | None = None
        self._labels: np.ndarray | None = None

    @property
    def partial_rows(self) -> int:
        """Rows of the partial shard after ``rows_done`` (0 when none is listed)."""
        return 0 if self._partial is None else self._partial["rows"]

    def __repr__(self) -> str:
        state = "complete" if self.complete else "writing"
        return (
            f"SketchStore({str(self.path)!r}, {state}, rows_done={self.rows_done}, "
            f"sketch_dim={self.sketch_dim}, shard_rows={self.shard_rows})"
        )

    # ----------------------------------------------------------------- opening

    @classmethod
    def open_for_writing(
        cls, path: str | os.PathLike[str], identity: dict[str, Any], *, shard_rows: int = 4096
    ) -> SketchStore:
        """Create a new store at ``path``, or resume the one there.

        A missing path or empty directory gets a fresh store. A store with the same identity and
        ``shard_rows`` is resumed: its listed shards are verified, the first failing one and all
        after it are dropped, unlisted shard and temp files are deleted, and ``rows_done`` counts
        the rows kept (the caller appends from there). A partial shard that verifies is kept
        (``partial_rows``, :meth:`read_partial`); one that does not is dropped. A complete,
        intact store comes back with ``complete=True``. A different identity, or a non-empty
        directory without a manifest, is refused with :class:`StoreError`; so is a store
        another writer holds open (its lock is held until :meth:`finish` or :meth:`close`, or
        until its process ends).
        """
        path = Path(path)
        identity = _check_identity(identity)
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
            raise ValueError(f"shard_rows must be a positive integer; got {shard_rows!r}")
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"{path} exists and is not a directory; choose another --out for the sketch store"
            )
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock_writer(path)
        try:
            store = cls._open_locked(path, identity, shard_rows)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        if lock is not None:
            store._unlock = weakref.finalize(store, os.close, lock)  # closed with the store
            if store.complete:
                store._unlock()  # nothing left to write
        return store

    @classmethod
    def _open_locked(cls, path: Path, identity: dict[str, Any], shard_rows: int) -> SketchStore:
        if not (path / MANIFEST).exists():
            entries = list(path.iterdir())
            leftovers = [e for e in entries if _TEMP_NAME.match(e.name) and e.is_file()]
            if len(leftovers) != len(entries):
                raise StoreError(
                    f"{path} is not empty and holds no {MANIFEST}: refusing to write a "
                    "sketch store into an unrelated directory; choose another --out"
                )
            for leftover in leftovers:  # a manifest temp file from a run killed at once
                leftover.unlink(missing_ok=True)
            store = cls(path, _new_manifest(identity, shard_rows), writable=True)
            store._write_manifest()
            return store

        manifest = _load_manifest(path)
        if manifest["version"] != STORE_VERSION:
            raise StoreError(
                f"store {path} has store version {manifest['version']}, written by an earlier "
                f"skmm whose sketch map this one (version {STORE_VERSION}) does not reproduce: "
                "it can still be read (skmm select), but not resumed or rewritten; write the "
                "sketch to another --out"
            )
        differences = _differences(manifest["identity"], identity)
        if manifest["shard_rows"] != shard_rows:
            differences.append(
                f"shard_rows: stored {manifest['shard_rows']}, requested {shard_rows}"
            )
        if differences:
            raise StoreError(_mismatch_message(path, differences))
        manifest["identity"] = identity
        store = cls(path, manifest, writable=True)
        store._recover()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> SketchStore:
        """Open a complete store for reading, verifying every file's checksum, shape and dtype.

        ``verify=False`` checks the manifest only; :meth:`array` then checks each shard the
        first time it reads it (for stores larger than memory, read by several ranks).
        """
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no sketch store at {path}: it does not exist")
        if not path.is_dir():
            raise StoreError(f"{path} is not a sketch store: it is a file, not a directory")
        if not (path / MANIFEST).exists():
            raise StoreError(f"{path} is not a sketch store: it holds no {MANIFEST}")
        manifest = _load_manifest(path)
        if manifest["state"] != "complete":
            rows = sum(shard["rows"] for shard in manifest["shards"])
            if _being_written(path):
                raise StoreError(
                    f"incomplete store {path}: {rows} of ? rows written so far by a writer "
                    "that is still running; wait for it to finish"
                )
            raise StoreError(
                f"incomplete store {path}: {rows} of ? rows written; "
                "rerun the same `skmm sketch` command to resume"
            )
        store = cls(path, manifest, writable=False)
        for shard in store._shards if verify else ():
            store._read_features(shard)
            store._read_labels(shard)
        return store

    # ----------------------------------------------------------------- writing

    def append(self, features: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Buffer rows and write every full shard (shard files first, then the manifest).

        ``features`` is float32 of shape (rows, m); ``labels`` int (rows,), given with every call
        or with none. Rows holding NaN or Inf are refused.
        """
        self._check_writable("append to")
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.width:
            raise ValueError(f"features must have shape (rows, {self.width}); got {features.shape}")
        if features.dtype != np.float32:
            raise ValueError(f"features must be float32; got {features.dtype}")
        rows = features.shape[0]
        first_row = self.rows_done + self._pending_rows
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise ValueError(
                f"features row {first_row + bad} (row {bad} of this batch) holds NaN or Inf"
            )
        has_labels = labels is not None
        if self._has_labels is not None and has_labels != self._has_labels:
            raise ValueError(
                "labels must be given with every batch or with none: "
                + ("earlier rows have labels" if self._has_labels else "earlier rows have none")
            )
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (rows,):
                raise ValueError(f"labels must have shape ({rows},); got {labels.shape}")
            if labels.dtype.kind not in "iu" or not np.can_cast(labels.dtype, np.int64):
                raise ValueError(f"labels must be integers (int64); got {labels.dtype}")
        if first_row + rows > _MAX_SHARDS * self.shard_rows:
            raise ValueError(
                f"store {self.path} would need more than {_MAX_SHARDS} shards; "
                "use a larger shard_rows"
            )
        self._has_labels = has_labels
        if labels is not None:
            self._pending_labels.append(labels.astype(_LABEL_DTYPE, copy=True))
        # copy: the caller may reuse its batch buffer
        self._pending_features.append(features.astype(_FEATURE_DTYPE, copy=True))
        self._pending_rows += rows
        self._guarded_flush(final=False)

    def finish(self, metadata: dict[str, Any] | None = None) -> None:
        """Write the remaining rows as a last, shorter shard and mark the store complete."""
        self._check_writable("finish")
        metadata = _canonical({} if metadata is None else metadata, "metadata")
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict; got {type(metadata).__name__}")
        self._guarded_flush(final=True)
        if self._pending_entry is not None:
            self._shards.append(self._pending_entry)
            self.rows_done += self._pending_entry["rows"]
            self._pending_entry = None
        self.complete, self.metadata, partial, self._partial = True, metadata, self._partial, None
        try:
            self._write_manifest()
        except BaseException:
            self.complete, self.metadata, self._partial = False, {}, partial
            self._break()
            raise
        self.close()

    def close(self) -> None:
        """Let another writer open the store. Rows appended but not yet in a full shard are
        dropped (a later :meth:`open_for_writing` resumes after the last listed shard); after
        :meth:`finish` this is a no-op."""
        if self._unlock is not None:
            self._unlock()
        self._closed = not self.complete

    # ----------------------------------------------------------------- reading

    @property
    def features(self) -> StoreArray:
        """The (N, m) float32 rows as a :class:`StoreArray`, read shard by shard when indexed
        (``np.asarray(store.features)`` reads them all; each shard's sha256 is checked on its
        first read)."""
        if self._array is None or self._array.shape[0] != self.rows_done:
            self._array = StoreArray(self)
        return self._array

    @property
    def labels(self) -> np.ndarray | None:
        """The (N,) int64 labels, or None when the store has none."""
        if not self._has_labels:
            return None
        if self._labels is None or self._labels.shape[0] != self.rows_done:
            out = np.empty(self.rows_done, dtype=np.int64)
            for shard in self._shards:
                out[shard["start"] : shard["start"] + shard["rows"]] = self._read_labels(shard)
            out.flags.writeable = False
            self._labels = out
        return self._labels

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K·m): rows stored and the row width (the sketch dimension times the blocks)."""
        return (self.rows_done, self.width)

    def __len__(self) -> int:
        return self.rows_done

    def load_features(self) -> np.ndarray:
        """The (N, m) float32 matrix in memory, shards concatenated in order (checksums
        verified again)."""
        check_memory(
            self.rows_done * self.width * _FEATURE_DTYPE.itemsize,
            f"reading the ({self.rows_done}, {self.width}) sketch of store {self.path}",
            "sketch again into a new store with a smaller --sketch-dim",
        )
        out = np.empty((self.rows_done, self.width), dtype=np.float32)
        for shard in self._shards:
            out[shard["start"] : shard["start"] + shard["rows"]] = self._read_features(shard)
        return out

    def add_shards(self, entries: list[dict[str, Any]]) -> None:
        """List shards written by :func:`write_shard` (by any rank), next in order.

        Full shards are listed in the manifest at once; a shorter one must be the last and
        is listed by :meth:`finish`. A shard replaces the partial shard of the same index.
        """
        self._check_writable("add shards to")
        if self._pending_rows or (self._pending_entry is not None and entries):
            raise ValueError("shards cannot be added after appended rows or a short last shard")
        for entry in entries:
            expected = len(self._shards)
            if entry["index"] != expected or entry["start"] != self.rows_done:
                raise ValueError(
                    f"shard {entry['index']} (row {entry['start']}) is not the next one: "
                    f"expected shard {expected} at row {self.rows_done}"
                )
            labelled = entry["labels_file"] is not None
            if self._has_labels is not None and labelled != self._has_labels:
                raise ValueError("labels must be given with every shard or with none")
            self._has_labels = labelled
            if self._partial is not None and self._partial["index"] == entry["index"]:
                self._partial = None  # its file now holds the whole shard
            if entry["rows"] < self.shard_rows:
                self._pending_entry = entry
                continue
            self._shards.append(entry)
            self.rows_done += entry["rows"]
        if entries:
            self._write_manifest()

    def set_partial(self, entry: dict[str, Any]) -> None:
        """List ``entry`` (from :func:`write_shard`) as the partial shard: the first rows of the
        next shard, fewer than ``shard_rows``, saved so that an interrupted run keeps them."""
        self._check_writable("save a partial shard in")
        if self._pending_rows or self._pending_entry is not None:
            raise ValueError("a partial shard cannot follow appended rows or a short last shard")
        expected = len(self._shards)
        if entry["index"] != expected or entry["start"] != self.rows_done:
            raise ValueError(
                f"a partial shard must be shard {expected} at row {self.rows_done}; "
                f"got shard {entry['index']} at row {entry['start']}"
            )
        if not 0 < entry["rows"] < self.shard_rows:
            raise ValueError(
                f"a partial shard holds 1 to {self.shard_rows - 1} rows; got {entry['rows']}"
            )
        labelled = entry["labels_file"] is not None
        if self._has_labels is not None and labelled != self._has_labels:
            raise ValueError("labels must be given with every shard or with none")
        self._has_labels = labelled
        self._partial = dict(entry)
        self._guarded_write_manifest()

    def read_partial(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The partial shard's rows and labels (checksums verified); ValueError if none."""
        if self._partial is None:
            raise ValueError(f"store {self.path} lists no partial shard")
        return self._read_features(self._partial), self._read_labels(self._partial)

    def verify_request(self, identity: dict[str, Any]) -> None:
        """StoreError when ``identity`` differs from the stored one, naming each differing key."""
        if not isinstance(identity, dict):
            raise ValueError(f"the store identity must be a dict; got {type(identity).__name__}")
        differences = _differences(self.identity, _canonical(identity, "the store identity"))
        if differences:
            raise StoreError(_mismatch_message(self.path, differences))

    # ----------------------------------------------------------------- internals

    def _check_writable(self, action: str) -> None:
        if not self._writable:
            raise StoreError(f"store {self.path} was opened for reading; cannot {action} it")
        if self.complete:
            raise StoreError(f"store {self.path} is already complete; cannot {action} it")
        if self._broken:
            raise StoreError(
                f"an earlier write to store {self.path} failed; "
                "open it again with open_for_writing to resume"
            )
        if self._closed:
            raise StoreError(
                f"store {self.path} was closed; open it again with open_for_writing to resume"
            )

    def _guarded_flush(self, *, final: bool) -> None:
        try:
            self._flush(final=final)
        except BaseException:
            self._break()
            raise

    def _break(self) -> None:
        """Refuse further writes (buffered rows may be half-written: resume from disk instead)
        and let a new writer, in this process or another, resume the store."""
        self._broken = True
        if self._unlock is not None:
            self._unlock()

    def _flush(self, *, final: bool) -> None:
        written = False
        while self._pending_rows >= self.shard_rows or (final and self._pending_rows > 0):
            features, labels = self._take(min(self.shard_rows, self._pending_rows))
            self._write_shard(features, labels)
            written = True
        if written and not final:
            self._write_manifest()

    def _take(self, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        def split(chunks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
            joined = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            rest = joined[rows:]
            return np.ascontiguousarray(joined[:rows]), [rest] if len(rest) else []

        features, self._pending_features = split(self._pending_features)
        labels = None
        if self._has_labels:
            labels, self._pending_labels = split(self._pending_labels)
        self._pending_rows -= rows
        return features, labels

    def _write_shard(self, features: np.ndarray, labels: np.ndarray | None) -> None:
        entry = write_shard(self.path, len(self._shards), self.rows_done, features, labels)
        if self._partial is not None and self._partial["index"] == entry["index"]:
            self._partial = None  # its file now holds the whole shard
        self._shards.append(entry)
        self.rows_done += entry["rows"]

    def _guarded_write_manifest(self) -> None:
        try:
            self._write_manifest()
        except BaseException:
            self._break()
            raise

    def _write_manifest(self) -> None:
        _fsync_dir(self.path)  # the shards' renames are durable before the manifest names them
        manifest = _new_manifest(self.identity, self.shard_rows)
        manifest["state"] = "complete" if self.complete else "writing"
        manifest["n_rows"] = self.rows_done if self.complete else None
        manifest["shards"] = self._shards
        manifest["metadata"] = self.metadata
        if self._partial is not None and not self.complete:
            manifest[PARTIAL] = self._partial
        write_json(self.path / MANIFEST, manifest)
        _fsync_dir(self.path)

    def _recover(self) -> None:
        """Keep the listed shards up to the first that fails verification, and the partial
        shard if it follows them and verifies; delete the rest."""
        kept = []
        for shard in self._shards:
            try:
                self._read_features(shard)
                self._read_labels(shard)
            except StoreError:
                break
            kept.append(shard)
        partial = self._partial
        if partial is not None:
            try:
                if len(kept) != len(self._shards):
                    raise StoreError("a shard before the partial one was dropped")
                self.read_partial()
            except StoreError:
                partial = None
        if len(kept) != len(self._shards) or partial is not self._partial:
            self._shards, self._partial = kept, partial
            self.rows_done = sum(shard["rows"] for shard in kept)
            listed = kept or ([partial] if partial else [])
            self._has_labels = listed[0]["labels_file"] is not None if listed else None
            self.complete = False
            self.metadata = {}
            self._write_manifest()
        listed = {MANIFEST}
        for shard in self._shards + ([self._partial] if self._partial else []):
            listed.update((shard["file"], shard["labels_file"]))
        for entry in self.path.iterdir():
            if entry.name in listed:
                continue
            if _SHARD_NAME.match(entry.name) or _TEMP_NAME.match(entry.name):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    entry.unlink()

    def _read_features(self, shard: dict[str, Any]) -> np.ndarray:
        return _read_npy(
            self.path,
            shard["file"],
            shard["sha256"],
            (shard["rows"], self.width),
            _FEATURE_DTYPE,
        ).astype(np.float32, copy=False)

    def _read_labels(self, shard: dict[str, Any]) -> np.ndarray | None:
        if shard["labels_file"] is None:
            return None
        return _read_npy(
            self.path, shard["labels_file"], shard["labels_sha256"], (shard["rows"],), _LABEL_DTYPE
        ).astype(np.int64, copy=False)


class StoreArray:
    """The (N, m) float32 rows of a complete store, read on demand shard by shard.

    Indexing with a slice, an int or an array of ints reads only the shards holding those
    rows, through a memory-map dropped right after the copy, so a store larger than memory
    can be streamed with memory bounded by what is asked for. A shard's sha256 is checked
    the first time it is read (streamed 1 MiB at a time).
    """

    ndim = 2
    dtype = np.dtype(np.float32)
    streamed = True  # a skmm.inputs.LazyArray: selection streams it

    def __init__(self, store: SketchStore) -> None:
        self.store = store
        self.shape = (store.rows_done, store.width)
        self._starts = np.asarray(
            [shard["start"] for shard in store._shards] + [store.rows_done], dtype=np.int64
        )
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StoreArray({str(self.store.path)!r}, shape={self.shape})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[0 : self.shape[0]]
        return rows if dtype is None else rows.astype(dtype)

    def _shard(self, index: int) -> np.ndarray:
        shard = self.store._shards[index]
        path = self.store.path / shard["file"]
        if index not in self._verified:
            _check_sha256(path, shard["sha256"], self.store.path)
            self._verified.add(index)
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise StoreError(
                f"store {self.store.path}: {shard['file']} is not a valid .npy file: {exc}"
            ) from None
        if mapped.dtype != _FEATURE_DTYPE or mapped.shape != (shard["rows"], self.shape[1]):
            raise StoreError(
                f"store {self.store.path}: {shard['file']} changed after it was verified"
            )
        return mapped

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("a store is read in contiguous row ranges or by row indices")
            out = np.empty((max(0, stop - start), self.shape[1]), dtype=np.float32)
            if stop <= start:
                return out
            first = int(np.searchsorted(self._starts, start, side="right")) - 1
            last = int(np.searchsorted(self._starts, stop - 1, side="right")) - 1
            for index in range(first, last + 1):
                lo = max(start, int(self._starts[index]))
                hi = min(stop, int(self._starts[index + 1]))
                base = int(self._starts[index])
                out[lo - start : hi - start] = self._shard(index)[lo - base : hi - base]
            return out
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        rows = np.asarray(key)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise IndexError("a store is read in contiguous row ranges or by row indices")
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for a store of {self.shape[0]} rows")
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        shards = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(shards, kind="stable")
        splits = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, splits) if rows.size else ():
            index = int(shards[group[0]])
            out[group] = self._shard(index)[rows[group] - self._starts[index]]
        return out


# --------------------------------------------------------------------- helpers


def write_shard(
    path: str | os.PathLike[str],
    index: int,
    start: int,
    features: np.ndarray,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write shard ``index`` (rows from ``start``) atomically; return its manifest entry.

    Any rank may write its own shards this way; :meth:`SketchStore.add_shards` lists them.
    """
    path = Path(path)
    features = np.ascontiguousarray(features, dtype=_FEATURE_DTYPE)
    entry: dict[str, Any] = {
        "index": index,
        "start": start,
        "rows": int(features.shape[0]),
        "file": f"shard-{index:05d}.npy",
        "sha256": _write_npy_bytes(path / f"shard-{index:05d}.npy", features),
        "labels_file": None,
        "labels_sha256": None,
    }
    if labels is not None:
        entry["labels_file"] = f"labels-{index:05d}.npy"
        labels = np.ascontiguousarray(labels, dtype=_LABEL_DTYPE)
        entry["labels_sha256"] = _write_npy_bytes(path / entry["labels_file"], labels)
    return entry


def _new_manifest(identity: dict[str, Any], shard_rows: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": STORE_VERSION,
        "state": "writing",
        "identity": identity,
        "shard_rows": shard_rows,
        "n_rows": None,
        "shards": [],
        "metadata": {},
    }


def _canonical(value: Any, what: str) -> Any:
    """``value`` as strict JSON reads it back, dict keys sorted (so files are deterministic)."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serializable (finite numbers): {exc}") from None
    return json.loads(text)


def _check_identity(identity: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(identity, dict):
        raise ValueError(f"the store identity must be a dict; got {type(identity).__name__}")
    identity = _canonical(identity, "the store identity")
    sketch_dim = identity.get("sketch_dim")
    if isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1:
        raise ValueError(
            f"the store identity needs a positive integer 'sketch_dim'; got {sketch_dim!r}"
        )
    if "blocks" in identity and not _is_int(identity["blocks"], 1):
        raise ValueError(
            f"the store identity's 'blocks' must be a positive integer; got {identity['blocks']!r}"
        )
    return identity


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(stored: dict[str, Any], requested: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: stored X, requested Y' for each differing key, nested dicts as dotted keys."""
    found = []
    for key in sorted(set(stored) | set(requested)):
        old, new = stored.get(key, _ABSENT), requested.get(key, _ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            found.extend(_differences(old, new, f"{prefix}{key}."))
        elif old is _ABSENT or new is _ABSENT or _json(old) != _json(new):
            found.append(f"{prefix}{key}: stored {_show(old)}, requested {_show(new)}")
    return found


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _mismatch_message(path: Path, differences: list[str]) -> str:
    return (
        f"store {path} was made for a different request: {'; '.join(differences)}; "
        "remove it or choose another --out"
    )


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _load_manifest(path: Path) -> dict[str, Any]:
    """Read and check the manifest's structure (not the shard files); StoreError if malformed."""
    where = path / MANIFEST
    try:
        manifest = read_json(where)
    except FileNotFoundError:
        raise StoreError(f"{path} is not a sketch store: it holds no {MANIFEST}") from None
    except (ValueError, OSError) as exc:
        raise StoreError(f"store {path}: {MANIFEST} could not be read: {exc}") from None

    def bad(problem: str) -> StoreError:
        return StoreError(f"store {path}: {MANIFEST} {problem}")

    if not isinstance(manifest, dict):
        raise bad("is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise bad(f"is not a skmm sketch store manifest (format {manifest.get('format')!r})")
    for key in _MANIFEST_KEYS:
        if key not in manifest:
            raise bad(f"lacks the field {key!r}")
    if not _is_int(manifest["version"]) or manifest["version"] not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise bad(f"has store version {manifest['version']!r}; this skmm reads versions {readable}")
    state = manifest["state"]
    if state not in ("writing", "complete"):
        raise bad(f"has an unknown state {state!r}")
    identity = manifest["identity"]
    if not isinstance(identity, dict) or not _is_int(identity.get("sketch_dim"), 1):
        raise bad("has no identity with a positive integer sketch_dim")
    if not _is_int(identity.get("blocks", 1), 1):
        raise bad(f"has a bad blocks count {identity['blocks']!r}")
    shard_rows = manifest["shard_rows"]
    if not _is_int(shard_rows, 1):
        raise bad(f"has a bad shard_rows {shard_rows!r}")
    n_rows = manifest["n_rows"]
    if state == "complete" and not _is_int(n_rows):
        raise bad(f"has a bad n_rows {n_rows!r}")
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("has metadata that is not a JSON object")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise bad("has a shard list that is not a list")

    partial = manifest.get(PARTIAL)
    if partial is not None and state == "complete":
        raise bad("of a complete store lists a partial shard")
    if partial is not None and not isinstance(partial, dict):
        raise bad("has a partial shard entry that is not a JSON object")
    checked = []
    start = 0
    entries = shards if partial is None else [*shards, partial]
    for position, shard in enumerate(entries):
        if not isinstance(shard, dict) or any(key not in shard for key in _SHARD_KEYS):
            raise bad(f"has a malformed shard entry at position {position}")
        for key in ("file", "labels_file"):
            name = shard[key]
            if name is None and key == "labels_file":
                continue
            if not isinstance(name, str) or not _SHARD_NAME.match(name):
                raise bad(f"lists {name!r}, which is not a plain shard file name")
        rows = shard["rows"]
        short = _is_int(rows, 1) and rows < shard_rows
        if position == len(shards):  # the partial shard
            rows_ok = short
        else:  # full, or the short last shard of a complete store
            last = position == len(shards) - 1
            full = _is_int(rows) and rows == shard_rows
            rows_ok = full or (short and last and state == "complete")
        labelled = shard["labels_file"] is not None
        if (
            shard["index"] != position
            or not _is_int(shard["index"])
            or shard["start"] != start
            or not _is_int(shard["start"])
            or not rows_ok
            or shard["file"] != f"shard-{position:05d}.npy"
            or (labelled and shard["labels_file"] != f"labels-{position:05d}.npy")
            or not isinstance(shard["sha256"], str)
            or not _SHA256.match(shard["sha256"])
            or labelled != isinstance(shard["labels_sha256"], str)
            or (labelled and not _SHA256.match(shard["labels_sha256"]))
            or labelled != (entries[0]["labels_file"] is not None)
        ):
            raise bad(f"has an inconsistent entry for shard {position} ({shard['file']})")
        checked.append({key: shard[key] for key in _SHARD_KEYS})
        start += shard["rows"]
    if state == "complete" and start != n_rows:
        raise bad(f"says n_rows is {n_rows} but its shards hold {start} rows")
    return {
        **manifest,
        "identity": _canonical(identity, "identity"),
        "metadata": _canonical(metadata, "metadata"),
        "shards": checked[: len(shards)],
        PARTIAL: checked[len(shards)] if partial is not None else None,
    }


def _write_npy_bytes(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically; return the file's sha256."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    with atomic_write(path) as stream:
        stream.write(data)
    return hashlib.sha256(data).hexdigest()


def _check_sha256(path: Path, sha256: str, directory: Path) -> None:
    """StoreError unless the file at ``path`` is a plain file (not a symbolic link) that
    hashes to ``sha256`` (read 1 MiB at a time)."""
    if path.is_symlink():
        raise StoreError(
            f"store {directory}: {path.name} is a symbolic link; a store holds plain files"
        )
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(2**20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise StoreError(f"store {directory}: {path.name} is missing") from None
    except OSError as exc:
        raise StoreError(f"store {directory}: {path.name} could not be read: {exc}") from None
    if digest.hexdigest() != sha256:
        raise StoreError(
            f"store {directory}: {path.name} fails its checksum (changed, truncated or corrupt)"
        )


def _read_npy(
    directory: Path, name: str, sha256: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """Read one shard file, checking its sha256, then its shape and dtype; never unpickles."""
    if (directory / name).is_symlink():
        raise StoreError(f"store {directory}: {name} is a symbolic link; a store holds plain files")
    try:
        data = (directory / name).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"store {directory}: {name} is missing") from None
    except OSError as exc:
        raise StoreError(f"store {directory}: {name} could not be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(
            f"store {directory}: {name} fails its checksum (changed, truncated or corrupt)"
        )
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"store {directory}: {name} is not a valid .npy file: {exc}") from None
    if array.dtype != dtype or array.shape != shape:
        raise StoreError(
            f"store {directory}: {name} holds {array.dtype} {array.shape}; expected {dtype} {shape}"
        )
    return array


def _lock_writer(path: Path) -> int | None:
    """Take the store directory's writer lock (:func:`hold_lock`, not waiting): the open
    descriptor holding it, or None where advisory locks are unavailable (Windows, some NFS)."""
    try:
        return hold_lock(path, wait=False)
    except BlockingIOError:
        raise StoreError(
            f"store {path} is being written by another writer (another process, or a "
            "SketchStore in this one that was neither finished nor closed); wait for it to "
            "finish, then rerun to resume or reuse the store, or choose another --out"
        ) from None


def _being_written(path: Path) -> bool:
    """True when a writer holds the store's lock now (False where locks are unavailable)."""
    try:
        lock = _lock_writer(path)
    except StoreError:
        return True
    except OSError:
        return False
    if lock is not None:
        os.close(lock)
    return False


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (best effort; a no-op where directories can't be opened)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(handle)
    finally:
        os.close(handle)
