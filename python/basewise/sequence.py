"""Sequence input: every form gReLU accepts, plus a few more, to index or one-hot encoding.

All three scoring functions take ``seqs`` in the same forms (spec section 2.5):

* a DNA string, or a list of strings (upper- or lower-case ``A C G T N``);
* a numpy integer array of base indices, 1-D ``(L,)`` or 2-D ``(B, L)``, values 0-4
  (0 = A, 1 = C, 2 = G, 3 = T, 4 = N); gReLU only takes int8, basewise any integer dtype;
* a one-hot array or tensor, ``(4, L)`` or ``(B, 4, L)``, channels A, C, G, T; an all-zero column
  is N; gReLU only takes float32 torch tensors, basewise also numpy arrays and other float dtypes;
* a pandas DataFrame of genomic intervals (columns ``chrom, start, end`` first, optional
  ``strand``) together with ``genome``: a FASTA path (read with pyfaidx, which writes a ``.fai``
  beside it when missing), an open ``pyfaidx.Fasta``, or a genomepy genome name (needs the optional
  ``genomepy`` package; it may download the genome).

Errors keep gReLU's messages and exception types, so ``except ValueError`` code written for gReLU
keeps working. Where gReLU raised a bare ``AssertionError`` basewise raises
:class:`SequenceInputError`, which is both a ``ValueError`` and an ``AssertionError``.

Example:
    >>> from basewise.sequence import to_indices, to_onehot
    >>> to_indices("ACGTN").tolist()
    [[0, 1, 2, 3, 4]]
    >>> to_onehot(["acg", "TTN"]).shape
    torch.Size([2, 4, 3])
"""

from __future__ import annotations

import os
from typing import Any, List, Sequence, Union

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ALPHABET",
    "SequenceInputError",
    "IntervalError",
    "to_indices",
    "to_onehot",
    "indices_to_strings",
    "intervals_to_strings",
    "reverse_complement",
]

ALPHABET = "ACGT"
_LETTERS = np.frombuffer(b"ACGTN", dtype=np.uint8)

# Byte -> base index lookup; 255 marks an invalid character.
_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate("ACGTN"):
    _LUT[ord(_c)] = _i
    _LUT[ord(_c.lower())] = _i
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")

_STR_ERROR = "Input string is not a valid DNA sequence."
_INDEX_ERROR = "Input array is not a valid index-encoded DNA sequence or batch of sequences"
_ONEHOT_ERROR = "Input tensor is not a valid one-hot encoded DNA sequence or batch of sequences"
_INTERVAL_ERROR = "Input dataframe is not a valid set of genomic intervals"


class SequenceInputError(ValueError, AssertionError):
    """Bad ``seqs``/``genome`` input; a ``ValueError`` that gReLU code catching
    ``AssertionError`` (its unequal-length, missing-genome and empty-list checks) also catches."""


try:  # pyfaidx is a dependency; gReLU lets its FetchError through for bad intervals
    from pyfaidx import FetchError as _FetchError
except ImportError:  # pragma: no cover
    _FetchError = IndexError


class IntervalError(SequenceInputError, _FetchError):
    """An interval on an unknown chromosome or past a chromosome's end: a
    :class:`SequenceInputError` that is also ``pyfaidx.FetchError`` (what gReLU raised)."""


SeqInput = Union[str, Sequence[str], np.ndarray, torch.Tensor, pd.DataFrame]


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string (case kept, N stays N).

    Example:
        >>> reverse_complement("AACC")
        'GGTT'
    """
    return seq.translate(_COMPLEMENT)[::-1]


def _strings_to_indices(seqs: Sequence[str]) -> np.ndarray:
    """Letters to an int8 index array (B, L); raises on bad letters or unequal lengths."""
    if len(seqs) == 0:
        return np.zeros((0, 0), dtype=np.int8)
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise SequenceInputError(
            f"seqs: sequences are not all of equal length (lengths {sorted(lengths)[:5]}); "
            "ISM and attributions need sequences of one length"
        )
    out = np.empty((len(seqs), lengths.pop()), dtype=np.int8)  # (B, L)
    for i, s in enumerate(seqs):
        try:
            raw = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            raise ValueError(_STR_ERROR) from None
        idx = _LUT[raw]
        if (idx == 255).any():
            raise ValueError(_STR_ERROR)
        out[i] = idx
    return out


_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz", ".fa.bgz", ".fasta.bgz")


def _load_genome(genome: Any):
    """A pyfaidx.Fasta for a path or open Fasta, or a genomepy Genome for a name."""
    if genome is None:
        raise SequenceInputError("genome name must be provided.")
    if hasattr(genome, "keys") and hasattr(genome, "__getitem__") and not isinstance(genome, (str, os.PathLike)):
        return genome  # an open pyfaidx.Fasta or genomepy.Genome
    if isinstance(genome, (str, os.PathLike)) and os.path.isfile(genome):
        import pyfaidx

        return pyfaidx.Fasta(os.fspath(genome), sequence_always_upper=False, rebuild=False)
    text = os.fspath(genome) if isinstance(genome, (str, os.PathLike)) else str(genome)
    if isinstance(genome, os.PathLike) or os.sep in text or text.lower().endswith(_FASTA_SUFFIXES):
        # a path, not a genomepy name: a missing file is reported as such, with or without genomepy
        raise SequenceInputError(f"genome: FASTA file {text!r} does not exist")
    try:
        import genomepy  # optional extra: basewise[genome]
    except ImportError:
        raise SequenceInputError(
            f"genome: {genome!r} is not an existing FASTA file, and genomepy (needed to use a "
            "genome name) is not installed; pip install 'basewise[genome]' or pass a FASTA path"
        ) from None
    return genomepy.Genome(genome)


def intervals_to_strings(intervals: pd.DataFrame, genome: Any) -> List[str]:
    """Upper-case sequences of genomic intervals, reverse-complemented on the ``-`` strand.

    Args:
        intervals: DataFrame whose first three columns are ``chrom, start, end`` (0-based,
            half-open); an optional ``strand`` column with ``"-"`` reverse-complements.
        genome: FASTA path, open ``pyfaidx.Fasta``, or genomepy genome name.

    Returns:
        A list of strings, one per row (also for a single row).

    Example:
        >>> import pandas as pd, tempfile, os
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "g.fa")
        >>> _ = open(p, "w").write(">chr1\\nACGTACGTAAccGGTT\\n")
        >>> df = pd.DataFrame({"chrom": ["chr1", "chr1"], "start": [8, 8], "end": [12, 12],
        ...                    "strand": ["+", "-"]})
        >>> intervals_to_strings(df, p)
        ['AACC', 'GGTT']
    """
    cols = list(intervals.columns)
    ok = len(cols) >= 3 and cols[:3] == ["chrom", "start", "end"]
    if ok:
        chrom_dtype = intervals["chrom"].dtype
        ok = (
            pd.api.types.is_string_dtype(chrom_dtype)
            or pd.api.types.is_object_dtype(chrom_dtype)
            or isinstance(chrom_dtype, pd.CategoricalDtype)
        ) and all(pd.api.types.is_integer_dtype(intervals[c].dtype) for c in ("start", "end"))
    if not ok:
        raise ValueError(_INTERVAL_ERROR)
    fasta = _load_genome(genome)
    strands = intervals["strand"].astype(str).tolist() if "strand" in intervals.columns else None
    out = []
    for i, (chrom, start, end) in enumerate(
        zip(intervals["chrom"].astype(str), intervals["start"], intervals["end"])
    ):
        start, end = int(start), int(end)
        if chrom not in fasta.keys():
            raise IntervalError(f"seqs: chromosome {chrom!r} (row {i}) is not in the genome")
        chrom_len = len(fasta[chrom])
        if start < 0 or end > chrom_len or start > end:
            raise IntervalError(
                f"seqs: interval {chrom}:{start}-{end} (row {i}) is outside the chromosome "
                f"(length {chrom_len}) or has start > end"
            )
        seq = str(fasta[chrom][start:end]).upper()
        if strands is not None and strands[i] == "-":
            seq = reverse_complement(seq)
        out.append(seq)
    return out


def _onehot_to_indices(x: np.ndarray) -> np.ndarray:
    """One-hot (B, 4, L) to index (B, L): argmax over channels, all-zero columns become N."""
    idx = x.argmax(axis=1).astype(np.int8)  # (B, L)
    idx[(x == 0).all(axis=1)] = 4
    return idx


def _is_int_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.integer) and not np.issubdtype(dtype, np.bool_)


def _check_index_array(a: np.ndarray) -> np.ndarray:
    if a.ndim not in (1, 2) or not _is_int_dtype(a.dtype):
        raise ValueError(_INDEX_ERROR)
    if a.size and (a.min() < 0 or a.max() > 4):
        raise ValueError(_INDEX_ERROR)
    return np.ascontiguousarray(a if a.ndim == 2 else a[None], dtype=np.int8)


def _check_onehot_shape(shape) -> None:
    if len(shape) not in (2, 3) or shape[-2] != 4:
        raise ValueError(_ONEHOT_ERROR)


def _tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _check_not_empty(shape: tuple) -> None:
    """Empty input never reaches a model: no sequences, or sequences of length 0."""
    if shape[0] == 0:
        raise SequenceInputError("seqs: no sequences were given")
    if shape[-1] == 0:
        raise SequenceInputError(f"seqs: the sequences are empty (length 0; {shape[0]} given)")


def to_indices(seqs: SeqInput, genome: Any = None) -> np.ndarray:
    """Convert any supported sequence input to base indices.

    Args:
        seqs: a string, list of strings, integer index array (L,) or (B, L), one-hot tensor or
            array (4, L) or (B, 4, L), or a DataFrame of intervals (see the module docstring).
        genome: FASTA path, open ``pyfaidx.Fasta`` or genomepy name; only used with intervals.
            Default None.

    Returns:
        np.ndarray int8 (B, L), values 0-4 (4 = N). A single sequence gives B = 1.

    Raises:
        ValueError: invalid letters, index values, one-hot shapes or intervals (gReLU's messages).
        SequenceInputError: no sequences, or sequences of length 0.
        TypeError: an unsupported input type, or a list of non-strings.

    Example:
        >>> to_indices(["AC", "gN"]).tolist()
        [[0, 1], [2, 4]]
    """
    idx = _to_indices(seqs, genome)
    _check_not_empty(idx.shape)
    return idx


def _to_indices(seqs: SeqInput, genome: Any) -> np.ndarray:
    if isinstance(seqs, str):
        return _strings_to_indices([seqs])
    if isinstance(seqs, pd.DataFrame):
        return _strings_to_indices(intervals_to_strings(seqs, genome))
    if isinstance(seqs, torch.Tensor):
        if seqs.is_floating_point() or seqs.dtype == torch.bool:
            _check_onehot_shape(tuple(seqs.shape))
            x = _tensor_to_numpy(seqs)
            return _onehot_to_indices(x if x.ndim == 3 else x[None])
        return _check_index_array(_tensor_to_numpy(seqs))
    if isinstance(seqs, np.ndarray):
        if _is_int_dtype(seqs.dtype):
            return _check_index_array(seqs)
        if np.issubdtype(seqs.dtype, np.floating) or seqs.dtype == np.bool_:
            _check_onehot_shape(seqs.shape)
            return _onehot_to_indices(seqs if seqs.ndim == 3 else seqs[None])
        raise ValueError(_INDEX_ERROR)
    if isinstance(seqs, (list, tuple)):
        if not all(isinstance(s, str) for s in seqs):
            raise TypeError("seqs: a list input must hold only DNA strings")
        return _strings_to_indices(list(seqs))
    raise TypeError("Input not of a supported type")


def to_onehot(seqs: SeqInput, genome: Any = None) -> torch.Tensor:
    """Convert any supported sequence input to a float32 one-hot CPU tensor.

    A floating-point one-hot tensor or array is passed through with its values unchanged (as
    gReLU does for ``get_attributions``), only cast to float32, moved to the CPU and given a batch
    axis if it is 2-D (gReLU leaves a (4, L) tensor unbatched; basewise batches it).

    Args:
        seqs: any input accepted by :func:`to_indices`.
        genome: FASTA path, open ``pyfaidx.Fasta`` or genomepy name; only used with intervals.
            Default None.

    Returns:
        torch.Tensor float32 (B, 4, L), channels A, C, G, T; N is an all-zero column.

    Example:
        >>> to_onehot("ACN")[0].tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    if isinstance(seqs, torch.Tensor) and (seqs.is_floating_point() or seqs.dtype == torch.bool):
        _check_onehot_shape(tuple(seqs.shape))
        x = seqs.detach().to("cpu", torch.float32)
        x = (x if x.ndim == 3 else x[None]).contiguous()  # (B, 4, L)
    elif isinstance(seqs, np.ndarray) and (np.issubdtype(seqs.dtype, np.floating) or seqs.dtype == np.bool_):
        _check_onehot_shape(seqs.shape)
        x = torch.from_numpy(np.ascontiguousarray(seqs, dtype=np.float32))
        x = (x if x.ndim == 3 else x[None]).clone()  # (B, 4, L)
    else:
        return indices_to_onehot(to_indices(seqs, genome))
    _check_not_empty(tuple(x.shape))
    return x


def indices_to_onehot(idx: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Index array (B, L) with values 0-4 to a float32 one-hot tensor (B, 4, L), N all-zero.

    Example:
        >>> indices_to_onehot(np.array([[0, 4]], dtype=np.int8)).sum().item()
        1.0
    """
    idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))  # (B, L)
    eye = torch.cat([torch.eye(4), torch.zeros(1, 4)])  # (5, 4): row 4 (N) is zero
    return eye[idx].permute(0, 2, 1).contiguous()  # (B, 4, L)


def indices_to_strings(idx: Union[np.ndarray, torch.Tensor]) -> List[str]:
    """Index array (B, L) or (L,) to upper-case letter strings.

    Example:
        >>> indices_to_strings(np.array([[0, 1, 2, 3, 4]]))
        ['ACGTN']
    """
    a = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
    a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    letters = _LETTERS[a.astype(np.int64)]  # (B, L) uint8
    return [row.tobytes().decode("ascii") for row in letters]
