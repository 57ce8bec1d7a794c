"""Results of many regions on disk: one chunked HDF5 file, written batch by batch, resumable.

Why HDF5 (through h5py) rather than zarr: one self-describing file that is easy to move and
that cluster file systems handle well (zarr writes one file per chunk: hundreds of thousands for a
large run), readable without basewise from Python (h5py), R (rhdf5), Julia (HDF5.jl), MATLAB
and the command line (h5dump, h5ls), and already the format of TF-MoDISco's results. Datasets
are chunked along regions and gzip-compressed (the one filter every HDF5 build has). Each batch
of scores is flushed to disk before its regions are marked done, so an interrupted run (Ctrl-C,
SIGTERM from a batch scheduler, an exception, even SIGKILL between writes) leaves a readable file
whose done regions are complete. HDF5 has no journal: a SIGKILL *during* the short flush of a
batch can damage the file's metadata. The file uses the oldest HDF5 format features (no SWMR
"open for writing" flag, which would make a crashed file unopenable without ``h5clear``); while a
run writes it, HDF5's file lock keeps other writers out. Reading while a run writes: open_results
opens the file without HDF5's file lock when the writer holds it (h5py's ``locking=False``, no
environment variable needed) and reads the regions marked done, which are complete on disk
(scores are flushed before ``/done`` is set). This is not HDF5's SWMR mode (SWMR would make a
file left by a killed run unopenable without ``h5clear``): a read that coincides with the
writer's flush can fail with an HDF5 error; open the file again.

Layout (N regions, sequence length L)::

    /                  attrs: format = "basewise-results", format_version = 1,
                              kind = "ism" | "attribution" | "attention", arguments (JSON text of the run's
                              arguments), info (JSON: command line, input paths),
                              basewise_version, n_regions, seq_len, score_axes
    /regions/name      (N,) str    region or FASTA record name
    /regions/chrom     (N,) str    chromosome (the FASTA record for FASTA input)
    /regions/start     (N,) int64  0-based start (0 for FASTA input)
    /regions/end       (N,) int64  end, exclusive (the record length for FASTA input)
    /regions/strand    (N,) str    "+", "-" or "." (reverse-complemented when "-")
    /done              (N,) uint8  1 once the region's scores are written
    /sequences         (N, L) int8 base indices 0-4 (A, C, G, T, N) of the scored sequences
    /scores            (N, ...)    "ism": float32 (N, P, 4, T, L_out) as ``ISM_predict(...,
                                   return_df=False)``; "attribution": (N, 4, L) float32
                                   (float64 for integratedgradients); "attention": (N, blocks,
                                   H, L', S) float16/32 (H = 1 with average_heads)
    /skipped/...       (S,)        optional: intervals left out by ``--on-bad-interval skip``
                                   (line, name, chrom, start, end, reason)

A region's row in ``/scores`` is meaningful only where ``/done`` is 1. Resuming (opening an
existing file for writing) checks that the run's arguments and regions are those stored and
refuses otherwise; :meth:`ResultsWriter.todo` lists the regions still to compute.

Example:
    >>> import os, tempfile, numpy as np, pandas as pd
    >>> from basewise.results import ResultsWriter, open_results
    >>> path = os.path.join(tempfile.mkdtemp(), "r.h5")
    >>> regions = pd.DataFrame({"name": ["a", "b"], "chrom": ["a", "b"], "start": [0, 0],
    ...                         "end": [3, 3], "strand": ["+", "+"]})
    >>> with ResultsWriter(path, "attribution", regions, seq_len=3, arguments={"method": "x"}) as w:
    ...     w.write([0, 1], np.zeros((2, 3), np.int8), np.ones((2, 4, 3), np.float32))
    >>> with open_results(path) as r:
    ...     r.complete, r.scores.shape, r.sequence(1)
    (True, (2, 4, 3), 'AAA')
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["ResultsWriter", "Results", "open_results", "ResultsMismatchError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "basewise-results"
FORMAT_VERSION = 1
KINDS = ("ism", "attribution", "attention")
SCORE_AXES = {"ism": "region,position,base,task,bin", "attribution": "region,base,position",
              "attention": "region,block,head,query,key"}
REGION_COLUMNS = ("name", "chrom", "start", "end", "strand")
SKIPPED_TEXT, SKIPPED_INT = ("name", "chrom", "reason"), ("line", "start", "end")  # /skipped columns
_CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk of /scores


class ResultsMismatchError(ValueError):
    """An existing results file does not belong to this run (other arguments or regions)."""


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a test dependency
        raise ImportError("basewise.results needs h5py: pip install h5py") from None
    return h5py


def _canonical(arguments: Dict[str, Any]) -> str:
    try:
        return json.dumps(arguments, sort_keys=True, default=str)
    except TypeError as e:
        raise ValueError(f"arguments: must be JSON-serialisable: {e}") from None


def _check_regions(regions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REGION_COLUMNS if c not in regions.columns]
    if missing:
        raise ValueError(f"regions: missing columns {missing}; expected {list(REGION_COLUMNS)}")
    out = pd.DataFrame(
        {
            "name": regions["name"].astype(str).to_numpy(dtype=object),
            "chrom": regions["chrom"].astype(str).to_numpy(dtype=object),
            "start": regions["start"].to_numpy(dtype=np.int64),
            "end": regions["end"].to_numpy(dtype=np.int64),
            "strand": regions["strand"].astype(str).to_numpy(dtype=object),
        }
    )
    if len(out) == 0:
        raise ValueError("regions: no regions")
    return out


def _strings(ds) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]], dtype=object)


def _read_regions(grp) -> pd.DataFrame:
    def strings(name: str) -> np.ndarray:
        return _strings(grp[name])

    return pd.DataFrame(
        {
            "name": strings("name"),
            "chrom": strings("chrom"),
            "start": grp["start"][()].astype(np.int64),
            "end": grp["end"][()].astype(np.int64),
            "strand": strings("strand"),
        }
    )


def _index(indices: np.ndarray) -> Union[slice, np.ndarray]:
    """A slice when the (sorted, unique) indices are contiguous, else the index array."""
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


class ResultsWriter:
    """Create or resume a results file and write regions' scores batch by batch.

    Opening an existing file resumes it: its kind, arguments, regions and sequence length must
    equal the ones given (otherwise :class:`ResultsMismatchError`), and :meth:`todo` lists the
    regions not yet written. ``overwrite=True`` starts afresh instead, and so does a basewise
    results file with no finished region (nothing in it can be lost).

    Args:
        path: the HDF5 file.
        kind: "ism", "attribution" or "attention".
        regions: DataFrame with columns name, chrom, start, end, strand (one row per region).
        seq_len: length L of every sequence.
        arguments: the run's arguments (JSON-serialisable dict); stored, and compared on resume.
            Leave out those that do not change the results (batch size, devices).
        overwrite: replace an existing file instead of resuming it. Default False.
        chunk_regions: regions per HDF5 chunk (capped so that a chunk holds about 1 MiB).
            Default 64.
        compression: "gzip" (readable everywhere), "lzf" (faster, h5py only) or None.
            Default "gzip".
        info: provenance stored with a new file as the JSON attribute ``info`` (command line,
            input paths); not compared on resume. Default None.
        skipped: intervals left out of the run (dicts with line, name, chrom, start, end,
            reason), stored in ``/skipped`` of a new file. Default None.

    Example:
        >>> import tempfile, os
        >>> regions = pd.DataFrame({"name": ["s"], "chrom": ["s"], "start": [0], "end": [2],
        ...                         "strand": ["+"]})
        >>> p = os.path.join(tempfile.mkdtemp(), "x.h5")
        >>> w = ResultsWriter(p, "ism", regions, seq_len=2, arguments={})
        >>> w.todo().tolist()
        [0]
        >>> w.close()
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        kind: str,
        regions: pd.DataFrame,
        seq_len: int,
        arguments: Dict[str, Any],
        overwrite: bool = False,
        chunk_regions: int = 64,
        compression: Optional[str] = "gzip",
        info: Optional[Dict[str, Any]] = None,
        skipped: Optional[Sequence[Dict[str, Any]]] = None,
    ):
        h5py = _h5py()
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if compression not in ("gzip", "lzf", None):
            raise ValueError(f"compression: expected 'gzip', 'lzf' or None, got {compression!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
        self.path = os.fspath(path)
        self.kind = kind
        self.regions = _check_regions(regions)
        self.n = len(self.regions)
        self.seq_len = int(seq_len)
        self.arguments_json = _canonical(arguments)
        self.info_json = _canonical(info or {})
        self.chunk_regions = max(1, int(chunk_regions))
        self.compression = compression
        self.skipped = list(skipped or [])
        self.resumed = os.path.exists(self.path) and not overwrite
        try:
            if self.resumed:
                self._f = h5py.File(self.path, "r+")
                try:
                    self._check_existing()
                except ResultsMismatchError:
                    if self._f.attrs.get("format") != FORMAT or "done" not in self._f or self._f["done"][()].any():
                        self._f.close()
                        raise
                    # a basewise file with no finished region: nothing to keep, start afresh
                    self._f.close()
                    self.resumed = False
            if not self.resumed:
                self._f = h5py.File(self.path, "w")
                self._create()
        except OSError as e:
            raise OSError(f"cannot open results file {self.path!r} for writing: {e}") from None
        self._done = self._f["done"][()].astype(bool)  # (N,)

    # -- creation and checks ------------------------------------------------------------------
    def _create(self) -> None:
        h5py = _h5py()
        f = self._f
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["kind"] = self.kind
        f.attrs["arguments"] = self.arguments_json
        f.attrs["info"] = self.info_json
        f.attrs["n_regions"] = self.n
        f.attrs["seq_len"] = self.seq_len
        f.attrs["score_axes"] = SCORE_AXES[self.kind]
        from . import __version__

        f.attrs["basewise_version"] = __version__
        g = f.create_group("regions")
        text = h5py.string_dtype("utf-8")
        for col in ("name", "chrom", "strand"):
            g.create_dataset(col, data=self.regions[col].tolist(), dtype=text)
        for col in ("start", "end"):
            g.create_dataset(col, data=self.regions[col].to_numpy(np.int64))
        f.create_dataset("done", data=np.zeros(self.n, np.uint8))
        if self.skipped:
            sk = f.create_group("skipped")
            for col in SKIPPED_TEXT:
                sk.create_dataset(col, data=[str(r[col]) for r in self.skipped], dtype=text)
            for col in SKIPPED_INT:
                sk.create_dataset(col, data=np.array([int(r[col]) for r in self.skipped], np.int64))
        rows = min(self.n, max(1, min(self.chunk_regions, _CHUNK_BYTES // self.seq_len)))
        f.create_dataset(
            "sequences", shape=(self.n, self.seq_len), dtype=np.int8, chunks=(rows, self.seq_len),
            fillvalue=4, compression=self.compression,
        )
        f.flush()

    def _check_existing(self) -> None:
        f = self._f
        if f.attrs.get("format") != FORMAT:
            raise ResultsMismatchError(f"{self.path!r} is not a basewise results file; use another output path")
        problems = []
        if f.attrs.get("kind") != self.kind:
            problems.append(f"kind {f.attrs.get('kind')!r} != {self.kind!r}")
        old = json.loads(f.attrs.get("arguments", "{}"))
        new = json.loads(self.arguments_json)
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):  # name the sub-entries that differ
                for sub in sorted(set(a) | set(b)):
                    if a.get(sub, "<absent>") != b.get(sub, "<absent>"):
                        what = "weights changed" if sub == "weights" else ""
                        problems.append(f"{key}.{sub}{' (' + what + ')' if what else ''}: stored "
                                        f"{a.get(sub, '<absent>')!r}, now {b.get(sub, '<absent>')!r}")
            else:
                problems.append(f"{key}: stored {a!r}, now {b!r}")
        if int(f.attrs.get("seq_len", -1)) != self.seq_len:
            problems.append(f"sequence length: stored {int(f.attrs.get('seq_len', -1))}, now {self.seq_len}")
        if not problems:
            stored = _read_regions(f["regions"])
            if len(stored) != self.n:
                problems.append(f"number of regions: stored {len(stored)}, now {self.n}")
            else:
                for col in REGION_COLUMNS:
                    diff = np.flatnonzero(stored[col].to_numpy() != self.regions[col].to_numpy())
                    if len(diff):
                        i = int(diff[0])
                        problems.append(
                            f"region {i} {col}: stored {stored[col].iloc[i]!r}, now {self.regions[col].iloc[i]!r}"
                        )
                        break
        if problems:
            raise ResultsMismatchError(
                f"refusing to resume {self.path!r}: it was written by a different run ("
                + "; ".join(problems[:4])
                + "); use another output path or overwrite it"
            )

    # -- writing -------------------------------------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """Copy of the done mask, bool (N,)."""
        return self._done.copy()

    def todo(self) -> np.ndarray:
        """Indices (int64, increasing) of the regions not yet written."""
        return np.flatnonzero(~self._done)

    def write(self, indices: Sequence[int], sequences: np.ndarray, scores: np.ndarray) -> None:
        """Write the scores of some regions, flush, then mark them done.

        Args:
            indices: region indices, increasing and unique.
            sequences: base indices, integer (n, L), values 0-4.
            scores: (n, ...) scores; all writes to one file must share shape[1:] and dtype.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)  # (n,)
        if len(idx) == 0:
            return
        if np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= self.n:
            raise ValueError(f"indices: expected increasing unique region indices in [0, {self.n})")
        sequences = np.asarray(sequences)
        scores = np.asarray(scores)
        if sequences.shape != (len(idx), self.seq_len):
            raise ValueError(f"sequences: expected shape {(len(idx), self.seq_len)}, got {sequences.shape}")
        if scores.ndim < 1 or scores.shape[0] != len(idx):
            raise ValueError(f"scores: expected {len(idx)} rows, got shape {scores.shape}")
        f = self._f
        if "scores" not in f:
            row_bytes = max(1, int(np.prod(scores.shape[1:], dtype=np.int64)) * scores.dtype.itemsize)
            rows = min(self.n, max(1, min(self.chunk_regions, _CHUNK_BYTES // row_bytes)))
            chunks = [rows] + list(scores.shape[1:])
            for ax in range(1, len(chunks)):  # a region larger than a chunk (attention maps): split it
                if int(np.prod(chunks, dtype=np.int64)) * scores.dtype.itemsize <= 4 * _CHUNK_BYTES:
                    break
                chunks[ax] = 1
            while int(np.prod(chunks, dtype=np.int64)) * scores.dtype.itemsize > 4 * _CHUNK_BYTES:
                ax = int(np.argmax(chunks))
                chunks[ax] = (chunks[ax] + 1) // 2
            f.create_dataset(
                "scores", shape=(self.n,) + scores.shape[1:], dtype=scores.dtype,
                chunks=tuple(chunks), compression=self.compression,
                fillvalue=np.nan if np.issubdtype(scores.dtype, np.floating) else 0,
            )
        dset = f["scores"]
        if dset.shape[1:] != scores.shape[1:] or dset.dtype != scores.dtype:
            raise ResultsMismatchError(
                f"scores: this run produces {scores.dtype} {scores.shape[1:]} per region, but "
                f"{self.path!r} holds {dset.dtype} {dset.shape[1:]}"
            )
        sel = _index(idx)
        f["sequences"][sel] = sequences.astype(np.int8, copy=False)
        dset[sel] = scores
        f.flush()  # scores reach the file before they are marked done
        f["done"][sel] = np.ones(len(idx), np.uint8)
        f.flush()
        self._done[idx] = True

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if getattr(self, "_f", None) is not None and self._f.id.valid:
            self._f.flush()
            self._f.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Results:
    """Read a results file (see the module docstring for the layout); lazy, h5py-backed.

    Attributes:
        kind: "ism", "attribution" or "attention".
        arguments: dict of the run's arguments.
        info: dict of provenance (command line, input paths), if stored.
        regions: DataFrame (name, chrom, start, end, strand), one row per region.
        skipped: DataFrame (line, name, chrom, start, end, reason) of the intervals the run left
            out (``--on-bad-interval skip``); empty when none.
        done: bool (N,) mask of the written regions (read when the file is opened).
        scores: the h5py dataset of scores (index it to read: ``r.scores[10:20]``).
        sequences: the h5py dataset of int8 base indices (N, L).

    Example:
        >>> # r = open_results("ism.h5"); df = r.ism_dataframe(0)  # (4, P) like ISM_predict
    """

    def __init__(self, path: Union[str, os.PathLike]):
        h5py = _h5py()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"results file {self.path!r} does not exist")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            if "lock" not in str(e).lower():
                raise
            # a run is writing it and holds HDF5's lock: read without the lock (done regions
            # are complete on disk; see the module docstring)
            self._f = h5py.File(self.path, "r", locking=False)
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise ValueError(f"{self.path!r} is not a basewise results file")
        self.kind = str(self._f.attrs["kind"])
        self.arguments = json.loads(self._f.attrs["arguments"])
        self.info = json.loads(self._f.attrs.get("info", "{}"))
        self.regions = _read_regions(self._f["regions"])
        self.done = self._f["done"][()].astype(bool)
        sk = self._f["skipped"] if "skipped" in self._f else None
        self.skipped = pd.DataFrame(
            {c: [] if sk is None else _strings(sk[c]) if c in SKIPPED_TEXT else sk[c][()]
             for c in ("line", "name", "chrom", "start", "end", "reason")})
        self.sequences = self._f["sequences"]
        self.scores = self._f["scores"] if "scores" in self._f else None

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def complete(self) -> bool:
        """True when every region is written."""
        return bool(self.done.all())

    def sequence(self, i: int) -> str:
        """The scored sequence of region ``i`` as a string."""
        from .sequence import indices_to_strings

        return indices_to_strings(self.sequences[i][None])[0]

    def iter_chunks(self, size: int = 256) -> Iterator[tuple]:
        """Yield ``(indices, sequences (n, L) int8, scores (n, ...))`` over the done regions."""
        if self.scores is None:
            return
        for s in range(0, len(self), size):
            idx = np.arange(s, min(len(self), s + size))
            keep = self.done[idx]
            if not keep.any():
                continue
            seqs, scores = self.sequences[s : idx[-1] + 1], self.scores[s : idx[-1] + 1]
            yield idx[keep], seqs[keep], scores[keep]

    def ism_dataframe(self, i: int, task: int = 0, bin: int = 0) -> pd.DataFrame:
        """ISM of region ``i`` as ``ISM_predict`` returns it for one sequence: a (4, P) DataFrame,
        rows A, C, G, T, columns the reference letters (``plot_ism`` reads them)."""
        if self.kind != "ism":
            raise ValueError(f"ism_dataframe: {self.path!r} holds {self.kind} results, not ISM")
        if not self.done[i]:
            raise ValueError(f"ism_dataframe: region {i} has not been computed yet")
        values = np.asarray(self.scores[i, :, :, task, bin]).T  # (4, P)
        start = int(self.arguments.get("start_pos") or 0)
        start = start + self.sequences.shape[1] if start < 0 else start
        ref = self.sequence(i)[start : start + values.shape[1]]
        return pd.DataFrame(values, index=list("ACGT"), columns=list(ref))

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_results(path: Union[str, os.PathLike]) -> Results:
    """Open a results file for reading (see :class:`Results`).

    Example:
        >>> # with open_results("attr.h5") as r: print(r.regions.head(), r.scores.shape)
    """
    return Results(path)
