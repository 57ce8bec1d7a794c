"""Export one-hot sequences and hypothetical attributions for TF-MoDISco (modisco-lite).

modisco-lite's command line reads two arrays of the same shape (N, 4, L), channels A, C, G, T:

    modisco motifs -s ohe.npz -a shap.npz -n 2000 -o modisco_results.h5

each from an ``.npz`` archive under the key ``arr_0`` (what ``np.savez`` names a positional
array) or from an ``.npy`` file. ``-s`` is the one-hot encoding of the sequences and ``-a`` the
*hypothetical* attributions: scores for all four bases at every position, as
``get_attributions(..., method="deepshap", hypothetical=True)`` returns them. modisco takes the
central ``-w`` (default 400) positions and transposes them to (N, w, 4) itself.

:func:`export_modisco` writes arrays already in memory; :func:`export_modisco_from_results`
streams them from a results file written by ``basewise attribute``, chunk by chunk, so the export
of a large run never holds all of it in memory, and writes a region index (``regions.tsv``: npz row
-> region, chrom, start, end, strand, name) beside them, so seqlets trace back to their peaks.

Example:
    >>> import numpy as np, tempfile, os
    >>> from basewise.modisco import export_modisco, load_modisco_input
    >>> d = tempfile.mkdtemp()
    >>> x = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]].T[None]  # (1, 4, 5) one-hot
    >>> s, a = export_modisco(x, x - 0.25, d)  # hypothetical scores: all 4 bases
    >>> load_modisco_input(s).shape, os.path.basename(a)
    ((1, 4, 5), 'shap.npz')
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Tuple, Union

import numpy as np

__all__ = ["export_modisco", "export_modisco_from_results", "load_modisco_input", "NpzStreamWriter"]

PathLike = Union[str, os.PathLike]


class NpzStreamWriter:
    """Write one array into an ``.npz`` archive (member ``arr_0.npy``) piece by piece.

    The archive is what ``np.savez_compressed(path, array)`` writes (``np.load(path)["arr_0"]``
    reads it), but the array is appended along its first axis, so it never has to be in memory.

    Args:
        path: the ``.npz`` file to create.
        shape: the full array shape; ``shape[0]`` rows must be appended in total.
        dtype: the array dtype.
        compress: deflate the member (like ``np.savez_compressed``). Default True.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.npz")
        >>> with NpzStreamWriter(p, (3, 2), np.float32) as w:
        ...     w.append(np.ones((2, 2))); w.append(np.zeros((1, 2)))
        >>> np.load(p)["arr_0"].sum()
        np.float32(4.0)
    """

    def __init__(self, path: PathLike, shape: Tuple[int, ...], dtype, compress: bool = True):
        self.path = os.fspath(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._zip = zipfile.ZipFile(self.path, "w", compression=mode, allowZip64=True)
        self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._member, header) if _needs_v2(header) else \
            np.lib.format.write_array_header_1_0(self._member, header)

    def append(self, rows: np.ndarray) -> None:
        """Append rows (n, *shape[1:]) to the array."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + rows.shape[0] > self.shape[0]:
            raise ValueError(
                f"rows: expected (n, {', '.join(map(str, self.shape[1:]))}) with at most "
                f"{self.shape[0] - self.rows} rows left, got {rows.shape}"
            )
        self._member.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        """Finish the archive; raises if fewer rows than ``shape[0]`` were appended."""
        if self._zip is None:
            return
        self._member.close()
        self._zip.close()
        self._zip = None
        if self.rows != self.shape[0]:
            os.remove(self.path)
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows were written; file removed")

    def __enter__(self) -> "NpzStreamWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._zip is not None:
            self._member.close()
            self._zip.close()
            self._zip = None
            os.remove(self.path)
            return
        self.close()


def _needs_v2(header: dict) -> bool:
    import io

    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
        return False
    except ValueError:
        return True


def _check_pair(onehot: np.ndarray, attrs: np.ndarray) -> None:
    if onehot.ndim != 3 or onehot.shape[1] != 4:
        raise ValueError(f"onehot: expected one-hot sequences of shape (N, 4, L), got {onehot.shape}")
    if attrs.shape != onehot.shape:
        raise ValueError(f"attributions: expected shape {onehot.shape} like onehot, got {attrs.shape}")


def _paths(out_dir: PathLike, seq_name: str, attr_name: str) -> Tuple[str, str]:
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, seq_name), os.path.join(out_dir, attr_name)


def export_modisco(
    onehot,
    attributions,
    out_dir: PathLike,
    seq_name: str = "ohe.npz",
    attr_name: str = "shap.npz",
    dtype=np.float32,
) -> Tuple[str, str]:
    """Write sequences and hypothetical attributions as modisco-lite's ``-s`` and ``-a`` inputs.

    Args:
        onehot: one-hot sequences (N, 4, L) (numpy or torch), or anything
            :func:`basewise.sequence.to_onehot` takes (strings, index arrays).
        attributions: hypothetical attributions (N, 4, L), e.g. from
            ``get_attributions(model, seqs, hypothetical=True)``.
        out_dir: folder for the two files (created if missing).
        seq_name: file name of the sequences. Default "ohe.npz".
        attr_name: file name of the attributions. Default "shap.npz".
        dtype: dtype written for both arrays. Default np.float32.

    Returns:
        The paths of the sequence and attribution files; run
        ``modisco motifs -s SEQS -a ATTRS -n 2000 -o modisco_results.h5``.

    Example:
        >>> import tempfile
        >>> x = np.zeros((2, 4, 8), np.float32); x[:, 0] = 1
        >>> [os.path.basename(p) for p in export_modisco(x, x - 0.25, tempfile.mkdtemp())]
        ['ohe.npz', 'shap.npz']
    """
    if not (isinstance(onehot, np.ndarray) or hasattr(onehot, "detach")) or getattr(onehot, "ndim", 0) != 3:
        from .sequence import to_onehot

        onehot = to_onehot(onehot)
    onehot = np.asarray(onehot.detach().cpu() if hasattr(onehot, "detach") else onehot)
    attributions = np.asarray(attributions.detach().cpu() if hasattr(attributions, "detach") else attributions)
    _check_pair(onehot, attributions)
    if np.allclose(attributions * (1 - onehot), 0) and np.any(attributions):
        warnings.warn(
            "attributions are non-zero only at the observed bases: TF-MoDISco needs hypothetical "
            "attributions (get_attributions(..., hypothetical=True))",
            UserWarning,
            stacklevel=2,
        )
    seq_path, attr_path = _paths(out_dir, seq_name, attr_name)
    np.savez_compressed(seq_path, onehot.astype(dtype, copy=False))
    np.savez_compressed(attr_path, attributions.astype(dtype, copy=False))
    return seq_path, attr_path


def export_modisco_from_results(
    results: PathLike,
    out_dir: PathLike,
    seq_name: str = "ohe.npz",
    attr_name: str = "shap.npz",
    chunk_size: int = 1024,
    allow_incomplete: bool = False,
    allow_non_hypothetical: bool = False,
    index_name: str = "regions.tsv",
) -> Tuple[str, str]:
    """Stream a ``basewise attribute`` results file into modisco-lite's two ``.npz`` inputs.

    Args:
        results: an HDF5 results file of kind "attribution" (see :mod:`basewise.results`).
        out_dir: folder for the two files (created if missing).
        seq_name: file name of the sequences. Default "ohe.npz".
        attr_name: file name of the attributions. Default "shap.npz".
        chunk_size: regions read at a time. Default 1024.
        allow_incomplete: export only the finished regions of an unfinished run (their indices
            are the rows of ``results.done``); otherwise refuse. Default False.
        allow_non_hypothetical: allow attributions that were not computed with
            ``hypothetical=True`` (TF-MoDISco expects hypothetical ones). Default False.
        index_name: file name of the region index written beside the two arrays. Default
            "regions.tsv".

    Returns:
        The paths of the sequence and attribution files. The region index (``index_name`` in
        ``out_dir``) is a tab-separated table with a header line and one line per exported row:
        ``row`` (the row of ohe.npz / shap.npz, i.e. modisco's example index), ``region`` (the
        region's index in the results file; equal to ``row`` unless unfinished regions were
        left out), ``chrom``, ``start``, ``end``, ``strand``, ``name``. A seqlet of modisco's
        example ``row`` at position ``i`` of its central window of width ``w`` lies at position
        ``j = L // 2 - w // 2 + i`` of the scored sequence (modisco's window offsets), which is
        genome coordinate ``start + j``, or ``end - 1 - j`` on ``-`` strand regions (they were
        reverse-complemented before scoring).

    Example:
        >>> # basewise attribute -m model.pt --bed peaks.bed --genome hg38.fa --hypothetical -o a.h5
        >>> # export_modisco_from_results("a.h5", "modisco_in")
    """
    from .results import open_results

    with open_results(results) as r:
        if r.kind != "attribution":
            raise ValueError(f"results: {r.path!r} holds {r.kind} results; TF-MoDISco needs attributions")
        if not r.arguments.get("hypothetical", False) and not allow_non_hypothetical:
            raise ValueError(
                f"results: {r.path!r} was computed without hypothetical=True; TF-MoDISco needs "
                "hypothetical attributions (rerun with --hypothetical, or pass allow_non_hypothetical=True)"
            )
        n_done = int(r.done.sum())
        if n_done == 0:
            raise ValueError(f"results: {r.path!r} has no finished regions")
        if n_done < len(r) and not allow_incomplete:
            raise ValueError(
                f"results: {r.path!r} is unfinished ({n_done} of {len(r)} regions); finish the run "
                "or pass allow_incomplete=True"
            )
        L = r.sequences.shape[1]
        seq_path, attr_path = _paths(out_dir, seq_name, attr_name)
        eye = np.concatenate([np.eye(4, dtype=np.float32), np.zeros((1, 4), np.float32)])  # (5, 4)
        with NpzStreamWriter(seq_path, (n_done, 4, L), np.float32) as ws, \
                NpzStreamWriter(attr_path, (n_done, 4, L), np.float32) as wa:
            for _, seqs, scores in r.iter_chunks(chunk_size):
                ws.append(eye[seqs.astype(np.int64)].transpose(0, 2, 1))  # (n, 4, L)
                wa.append(scores)
        _write_region_index(os.path.join(os.fspath(out_dir), index_name), r.regions, r.done)
    return seq_path, attr_path


def _write_region_index(path: str, regions, done: np.ndarray) -> None:
    """regions.tsv: one line per exported row (the done regions, in order)."""
    idx = np.flatnonzero(done)  # (n_done,) rows of the npz files -> region indices
    table = regions.iloc[idx][["chrom", "start", "end", "strand", "name"]].reset_index(drop=True)
    table.insert(0, "region", idx)
    table.insert(0, "row", np.arange(len(idx)))
    table.to_csv(path, sep="\t", index=False)


def load_modisco_input(path: PathLike) -> np.ndarray:
    """Read a file the way modisco-lite's ``motifs`` command reads ``-s``/``-a``.

    Uses modisco-lite's own reader when it is installed, otherwise the rule it implements:
    ``np.load(path)["arr_0"]`` for ``.npz`` and ``np.load(path)`` for ``.npy``.

    Example:
        >>> # load_modisco_input("modisco_in/ohe.npz").shape  -> (N, 4, L)
    """
    from pathlib import Path

    path = Path(path)
    try:
        from modiscolite.cli import _load_input  # modisco-lite >= 2.x

        return np.asarray(_load_input(path))
    except ImportError:
        pass
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["arr_0"]
    return np.load(path)
