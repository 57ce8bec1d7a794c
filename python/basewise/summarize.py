"""Per-position scores and summaries of a results file, in genome coordinates.

After ``basewise ism`` / ``basewise attribute`` (or :func:`basewise.runs.ism_regions` /
:func:`basewise.runs.attribute_regions`) have written a results file (:mod:`basewise.results`),
these helpers turn its scores into one number per position and region and map the positions back
to the genome:

* :func:`position_scores`: a (regions, positions) array of one per-position score.
* :func:`region_summary`: one row per region (max, its genome position, sum, mean).
* :func:`top_positions`: the top-n positions per region (or over all regions).
* :func:`to_bedgraph` / :func:`export_bigwig`: the per-position score merged over regions, for
  genome browsers.
* :func:`to_pandas` (long table, one row per region and position) and :func:`to_xarray` (the raw
  scores with named dimensions).

Per-position scores (``score=``; the default is ``"mean_abs"`` for ISM and ``"attr_x_input"`` for
attributions):

* ``"mean_abs"``: ISM: mean |effect| over the 3 substitutions of the position (over all 4 at
  an N reference); attributions: mean |attribution| over the 4 bases.
* ``"max_abs"``: ISM: max |effect| over the same substitutions; attributions: max
  |attribution| over the 4 bases.
* ``"logo"`` (ISM only): the ISM logo height, ``-mean`` of the position's 4 values, 0 at an N
  reference (as :func:`basewise.plot.ism_logo_heights` and gReLU's ``plot_ISM``; signed).
* ``"attr_x_input"`` (attributions only): attribution x one-hot input summed over the bases, i.e.
  the attribution of the reference base (0 at N): the height of the attribution logo (signed).

The *effect* of a substitution is its ISM value minus the value of the unmutated sequence under
the run's compare function: the value itself for ``"subtract"`` and ``"log2FC"``, value - 1 for
``"divide"``, and for raw predictions (no compare function) or a custom one, value minus the
reference-base entry (which holds the unmutated prediction). ISM scores of one task and one
output bin are used: ``task=0, bin=0`` by default (the convention of
:meth:`basewise.results.Results.ism_dataframe`); a task or bin outside the file's range raises a
ValueError naming the valid range.

Positions: column ``p`` of a region's scores is position ``offset + p`` of the *scored* sequence
(``offset`` = the ISM run's ``start_pos``, 0 for attributions). Regions on the ``-`` strand were
reverse-complemented before scoring, so sequence position ``j`` is genome coordinate
``end - 1 - j`` there and ``start + j`` on ``+`` / ``.``. Reference bases are reported on the
``+`` strand. Genome positions are 0-based. Regions N-padded past a chromosome's ends
(``--on-bad-interval pad``) keep those positions (reference N; coordinates below 0 or past the
end) in the tables; the bedGraph and bigWig tracks leave them out.

Only finished regions (the file's done mask) are read; the tables say how many were skipped in
``df.attrs["skipped"]`` (and the ``basewise summarize`` command prints it).

Example:
    >>> import os, tempfile, torch, pandas as pd
    >>> from basewise.runs import ism_regions
    >>> d = tempfile.mkdtemp(); fa = os.path.join(d, "g.fa")
    >>> _ = open(fa, "w").write(">chr1\\n" + "ACGTTGCA" * 8 + "\\n")
    >>> _ = torch.manual_seed(0); m = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3, padding=1), torch.nn.AdaptiveAvgPool1d(1))
    >>> bed = pd.DataFrame({"chrom": ["chr1", "chr1"], "start": [0, 20], "end": [16, 36], "strand": ["+", "-"]})
    >>> ism_regions(m, bed, fa, os.path.join(d, "ism.h5"), compare_func="subtract", progress=False).close()
    >>> ps = position_scores(os.path.join(d, "ism.h5"))
    >>> ps.values.shape, ps.genome_positions()[1, :3].tolist()  # region 1 is on "-": 35, 34, 33
    ((2, 16), [35, 34, 33])
    >>> top_positions(os.path.join(d, "ism.h5"), n=2).columns.tolist()[:4]
    ['chrom', 'pos', 'ref', 'score']
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

__all__ = [
    "SCORES",
    "PositionScores",
    "position_scores",
    "region_summary",
    "top_positions",
    "to_pandas",
    "to_xarray",
    "to_bedgraph",
    "export_bigwig",
    "read_chrom_sizes",
]

SCORES = ("mean_abs", "max_abs", "logo", "attr_x_input")
MERGES = ("mean", "max")
_BASES = np.array(list("ACGTN"), dtype=object)
_COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.int8)  # A<->T, C<->G, N stays
_BASELINE = {"subtract": 0.0, "log2FC": 0.0, "divide": 1.0}  # compare(ref, ref)
_CHUNK = 256  # regions read at a time

ResultsLike = Union[str, os.PathLike, Any]  # a path or an open basewise.results.Results


# ---------------------------------------------------------------------------------------------
# per-position scores
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PositionScores:
    """One per-position score of some regions (see :func:`position_scores`).

    Attributes:
        score: the score's name ("mean_abs", "max_abs", "logo" or "attr_x_input").
        kind: "ism" or "attribution".
        index: region indices (rows of the results file), int64 (n,).
        regions: the regions' table, n rows: region, name, chrom, start, end, strand.
        values: the scores, float64 (n, P); NaN where the stored scores are NaN.
        ref: base indices 0-4 (A, C, G, T, N) of the scored sequence at those positions, int8
            (n, P) (reverse-complemented on ``-``; see :meth:`ref_plus`).
        offset: position of column 0 in the scored sequence (ISM ``start_pos``; 0 for attributions).
        skipped: regions asked for but not read because they are unfinished.
    """

    score: str
    kind: str
    index: np.ndarray
    regions: pd.DataFrame
    values: np.ndarray
    ref: np.ndarray
    offset: int
    skipped: int = 0

    def seq_positions(self) -> np.ndarray:
        """Positions of the columns in the scored sequence, int64 (P,)."""
        return self.offset + np.arange(self.values.shape[1], dtype=np.int64)

    def genome_positions(self) -> np.ndarray:
        """0-based genome coordinates of every score, int64 (n, P); ``-`` regions mapped back."""
        j = self.seq_positions()[None, :]  # (1, P)
        start = self.regions["start"].to_numpy(np.int64)[:, None]  # (n, 1)
        end = self.regions["end"].to_numpy(np.int64)[:, None]
        minus = (self.regions["strand"].to_numpy() == "-")[:, None]
        return np.where(minus, end - 1 - j, start + j)  # (n, P)

    def ref_plus(self) -> np.ndarray:
        """Reference base indices on the ``+`` strand, int8 (n, P)."""
        minus = (self.regions["strand"].to_numpy() == "-")[:, None]
        return np.where(minus, _COMPLEMENT[self.ref.astype(np.int64)], self.ref).astype(np.int8)


class _Opened:
    """Context manager: open a path (and close it after), or pass an open Results through."""

    def __init__(self, results: ResultsLike):
        self.results = results
        self.own = isinstance(results, (str, os.PathLike))

    def __enter__(self):
        if self.own:
            from .results import open_results

            self.r = open_results(self.results)
        else:
            self.r = self.results
            if not hasattr(self.r, "done") or not hasattr(self.r, "scores"):
                raise TypeError(f"results: expected a results file path or an open Results, got {type(self.r).__name__}")
        return self.r

    def __exit__(self, *exc) -> None:
        if self.own:
            self.r.close()


def _check_score(kind: str, score: Optional[str]) -> str:
    if score is None:
        return "mean_abs" if kind == "ism" else "attr_x_input"
    if score not in SCORES:
        raise ValueError(f"score: expected one of {list(SCORES)}, got {score!r}")
    if kind == "ism" and score == "attr_x_input":
        raise ValueError("score: 'attr_x_input' is for attribution results; ISM results take "
                         "'mean_abs', 'max_abs' or 'logo'")
    if kind == "attribution" and score == "logo":
        raise ValueError("score: 'logo' is the ISM logo height; for attribution results use 'attr_x_input' "
                         "(the height of the attribution logo), 'mean_abs' or 'max_abs'")
    return score


def _check_index(value: Any, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < size:
        valid = "0" if size == 1 else f"0 to {size - 1}"
        raise ValueError(f"{what}: the results have {size} {what}{'s' if size != 1 else ''}; expected an "
                         f"integer from {valid}, got {value!r}")
    return int(value)


def _selection(r, regions: Optional[Sequence[int]]) -> Tuple[np.ndarray, int]:
    """(done region indices to read, increasing; number of asked-for regions that are unfinished)."""
    n = len(r)
    if regions is None:
        asked = np.arange(n, dtype=np.int64)
    else:
        asked = np.unique(np.asarray(regions, dtype=np.int64).reshape(-1))
        if len(asked) and (asked[0] < 0 or asked[-1] >= n):
            raise ValueError(f"regions: region indices must lie in [0, {n}), got {asked[0] if asked[0] < 0 else asked[-1]}")
    keep = r.done[asked] if len(asked) else np.zeros(0, bool)
    return asked[keep], int((~keep).sum())


def _ism_offset(r) -> int:
    start = int(r.arguments.get("start_pos") or 0)
    return start + r.sequences.shape[1] if start < 0 else start


def _ism_values(vals: np.ndarray, ref: np.ndarray, score: str, compare: Any) -> np.ndarray:
    """Per-position ISM score: vals (n, P, 4) float64, ref (n, P) int -> (n, P)."""
    is_n = ref == 4  # (n, P)
    ref_c = np.minimum(ref, 3).astype(np.int64)
    if score == "logo":  # -mean of the column, drawn at the reference base (0 at N)
        return np.where(is_n, 0.0, -vals.mean(axis=2))
    if isinstance(compare, str) and compare in _BASELINE:
        base = np.full((len(vals), 1, 1), _BASELINE[compare])
    else:  # raw predictions (or a custom compare): the reference-base entry of a non-N position
        base = np.full((len(vals), 1, 1), np.nan)
        has = (~is_n).any(axis=1)  # (n,)
        first = np.argmax(~is_n, axis=1)  # (n,) first non-N position
        rows = np.flatnonzero(has)
        base[rows, 0, 0] = vals[rows, first[rows], ref_c[rows, first[rows]]]
    effect = np.abs(vals - base)  # (n, P, 4)
    alt = np.ones(vals.shape, bool)  # the substitutions: every base but the reference (all 4 at N)
    rows, cols = np.nonzero(~is_n)
    alt[rows, cols, ref_c[rows, cols]] = False
    if score == "mean_abs":
        return np.where(alt, effect, 0.0).sum(axis=2) / alt.sum(axis=2)
    with np.errstate(invalid="ignore"):
        out = np.where(alt, effect, -np.inf).max(axis=2)  # max_abs
    return out


def _attr_values(vals: np.ndarray, ref: np.ndarray, score: str) -> np.ndarray:
    """Per-position attribution score: vals (n, L, 4) float64, ref (n, L) int -> (n, L)."""
    if score == "mean_abs":
        return np.abs(vals).mean(axis=2)
    if score == "max_abs":
        return np.abs(vals).max(axis=2)
    picked = np.take_along_axis(vals, np.minimum(ref, 3).astype(np.int64)[..., None], axis=2)[..., 0]
    return np.where(ref == 4, 0.0, picked)  # attr_x_input: the reference base's attribution


def _iter_scores(r, score: Optional[str], task: int, bin: int, regions: Optional[Sequence[int]],
                 chunk: int = _CHUNK) -> Tuple[str, int, Iterator[PositionScores]]:
    """(score name, skipped, iterator of PositionScores chunks over the done selected regions)."""
    score = _check_score(r.kind, score)
    if r.scores is None:
        raise ValueError(f"results: {r.path!r} has no finished regions")
    if r.kind == "ism":
        _, _, _, n_tasks, n_bins = r.scores.shape
        task = _check_index(task, n_tasks, "task")
        bin = _check_index(bin, n_bins, "bin")
    idx, skipped = _selection(r, regions)
    if len(idx) == 0:
        raise ValueError(f"results: {r.path!r} has no finished regions"
                         + (" among those selected" if regions is not None else ""))
    offset = _ism_offset(r) if r.kind == "ism" else 0
    compare = r.arguments.get("compare_func")
    table = r.regions

    def chunks() -> Iterator[PositionScores]:
        from .results import _index

        for s in range(0, len(idx), chunk):
            sub = idx[s:s + chunk]  # (n,) increasing
            sel = _index(sub)
            seqs = np.asarray(r.sequences[sel]).astype(np.int64)  # (n, L)
            if r.kind == "ism":
                vals = np.asarray(r.scores[sel, :, :, task, bin], dtype=np.float64)  # (n, P, 4)
                ref = seqs[:, offset:offset + vals.shape[1]]  # (n, P)
                values = _ism_values(vals, ref, score, compare)
            else:
                vals = np.asarray(r.scores[sel], dtype=np.float64).transpose(0, 2, 1)  # (n, L, 4)
                ref = seqs
                values = _attr_values(vals, ref, score)
            reg = table.iloc[sub].reset_index(drop=True)
            reg.insert(0, "region", sub)
            yield PositionScores(score, r.kind, sub, reg, values, ref.astype(np.int8), offset)

    return score, skipped, chunks()


def position_scores(results: ResultsLike, score: Optional[str] = None, task: int = 0, bin: int = 0,
                    regions: Optional[Sequence[int]] = None) -> PositionScores:
    """One per-position score of the finished regions of a results file, in memory.

    Args:
        results: a results file path, or an open :class:`basewise.results.Results`.
        score: "mean_abs", "max_abs", "logo" (ISM) or "attr_x_input" (attributions); see the
            module docstring. Default None ("mean_abs" for ISM, "attr_x_input" for attributions).
        task: ISM task (axis T) whose scores are used. Default 0.
        bin: ISM output bin (axis L_out) whose scores are used. Default 0.
        regions: region indices to read. Default None (all finished regions).

    Returns:
        :class:`PositionScores`: ``values`` (n, P) for the n finished selected regions
        (``skipped`` counts the unfinished ones left out), with ``genome_positions()``,
        ``ref_plus()`` and the regions' table.

    Raises:
        ValueError: an unknown score or one that does not fit the results' kind, a task or bin
            out of range, or no finished region.

    Example:
        >>> # ps = position_scores("ism.h5", "max_abs"); ps.values.shape  -> (n, P)
    """
    with _Opened(results) as r:
        score, skipped, it = _iter_scores(r, score, task, bin, regions)
        parts = list(it)
    out = PositionScores(
        score, parts[0].kind, np.concatenate([p.index for p in parts]),
        pd.concat([p.regions for p in parts], ignore_index=True),
        np.concatenate([p.values for p in parts]), np.concatenate([p.ref for p in parts]), parts[0].offset, skipped,
    )
    return out


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _nan_argmax(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row-wise (max, argmax) ignoring NaN; NaN and -1 for all-NaN rows. values (n, P)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    arg = np.argmax(filled, axis=1)  # (n,) first of ties
    best = filled[np.arange(len(values)), arg]
    empty = np.isnan(values).all(axis=1)
    return np.where(empty, np.nan, best), np.where(empty, -1, arg)


def region_summary(results: ResultsLike, score: Optional[str] = None, task: int = 0, bin: int = 0,
                   regions: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """One row per finished region: its coordinates and the max, sum and mean of a per-position score.

    Args:
        results: a results file path, or an open :class:`basewise.results.Results`.
        score: per-position score (see :func:`position_scores`). Default None (kind's default).
        task, bin: the ISM task and output bin. Defaults 0, 0.
        regions: region indices to summarise. Default None (all finished regions).

    Returns:
        DataFrame with columns region (index in the results file), chrom, start, end, strand,
        name, max, max_pos (0-based genome coordinate of the max; the first such position in the
        scored sequence on ties; -1 when every score is NaN), max_ref (its reference base on
        the + strand), sum, mean (NaN scores ignored). ``df.attrs`` holds ``score``,
        ``skipped`` (unfinished regions left out) and ``kind``.

    Example:
        >>> # region_summary("ism.h5", "max_abs").sort_values("max", ascending=False).head()
    """
    rows: List[pd.DataFrame] = []
    with _Opened(results) as r:
        score, skipped, it = _iter_scores(r, score, task, bin, regions)
        for ps in it:
            best, arg = _nan_argmax(ps.values)  # (n,), (n,)
            at = np.arange(len(arg))
            pos = np.where(arg >= 0, ps.genome_positions()[at, np.maximum(arg, 0)], -1)
            ref = np.where(arg >= 0, ps.ref_plus()[at, np.maximum(arg, 0)], 4)
            df = ps.regions[["region", "chrom", "start", "end", "strand", "name"]].copy()
            df["max"] = best
            df["max_pos"] = pos.astype(np.int64)
            df["max_ref"] = _BASES[ref]
            df["sum"] = np.nansum(ps.values, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                df["mean"] = df["sum"] / (~np.isnan(ps.values)).sum(axis=1)
            rows.append(df)
        kind = r.kind
    out = pd.concat(rows, ignore_index=True)
    out.attrs.update(score=score, skipped=skipped, kind=kind)
    return out


def _top(values: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n largest values of each row, largest first, NaN last and dropped
    by the caller; ties keep the lower index. values (m, P) -> (m, min(n, P))."""
    key = np.where(np.isnan(values), np.inf, -values)
    return np.argsort(key, axis=1, kind="stable")[:, :n]


def _position_frame(ps: PositionScores, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
    """Long table of the scores at (rows, cols) of a PositionScores."""
    reg = ps.regions.iloc[rows]
    j = ps.offset + cols
    start, end = reg["start"].to_numpy(np.int64), reg["end"].to_numpy(np.int64)
    minus = reg["strand"].to_numpy() == "-"
    ref = ps.ref[rows, cols].astype(np.int64)
    return pd.DataFrame({
        "chrom": reg["chrom"].to_numpy(),
        "pos": np.where(minus, end - 1 - j, start + j).astype(np.int64),
        "ref": _BASES[np.where(minus, _COMPLEMENT[ref], ref)],
        "score": ps.values[rows, cols],
        "region": reg["region"].to_numpy(np.int64),
        "name": reg["name"].to_numpy(),
        "strand": reg["strand"].to_numpy(),
        "seq_pos": j.astype(np.int64),
    })


def top_positions(results: ResultsLike, n: int = 10, score: Optional[str] = None, per_region: bool = True,
                  task: int = 0, bin: int = 0, regions: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """The n highest-scoring positions of each finished region (or of all of them), in genome coordinates.

    Args:
        results: a results file path, or an open :class:`basewise.results.Results`.
        n: positions per region (or in all, with ``per_region=False``). Default 10.
        score: per-position score (see :func:`position_scores`); ranked by value, largest
            first (``"logo"`` is signed: its top positions are where mutating the reference
            lowers the prediction most). Default None (kind's default).
        per_region: the top n of each region; False: the top n over all regions. Default True.
        task, bin: the ISM task and output bin. Defaults 0, 0.
        regions: region indices to read. Default None (all finished regions).

    Returns:
        DataFrame with columns chrom, pos (0-based genome coordinate; ``-`` strand regions
        mapped back), ref (reference base on the + strand), score, rank (1 = highest, within
        the region or overall), region (index in the results file), name, strand, seq_pos
        (position in the scored, possibly reverse-complemented, sequence; ISM positions include
        ``start_pos``). Positions with a NaN score are left out; ties keep sequence order.
        ``df.attrs`` holds ``score``, ``skipped`` and ``kind``.

    Example:
        >>> # top_positions("attr.h5", n=5, per_region=False)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    parts: List[pd.DataFrame] = []
    with _Opened(results) as r:
        score, skipped, it = _iter_scores(r, score, task, bin, regions)
        for ps in it:
            cols = _top(ps.values, n)  # (m, k)
            rows = np.repeat(np.arange(len(cols)), cols.shape[1])
            df = _position_frame(ps, rows, cols.reshape(-1))
            df.insert(4, "rank", np.tile(np.arange(1, cols.shape[1] + 1), len(cols)))
            df = df[~np.isnan(df["score"].to_numpy())]
            if not per_region:  # keep the chunk's best n: the overall best n are among them
                df = df.sort_values("score", ascending=False, kind="stable").head(n)
            parts.append(df)
        kind = r.kind
    out = pd.concat(parts, ignore_index=True)
    if not per_region:
        out = out.sort_values("score", ascending=False, kind="stable").head(n).reset_index(drop=True)
        out["rank"] = np.arange(1, len(out) + 1)
    else:  # drop ranks emptied by NaN scores
        out["rank"] = out.groupby("region").cumcount() + 1
    out.attrs.update(score=score, skipped=skipped, kind=kind)
    return out


def to_pandas(results: ResultsLike, score: Optional[str] = None, task: int = 0, bin: int = 0,
              regions: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Long table of a per-position score: one row per finished region and scored position.

    Holds n_regions x P rows in memory; select ``regions`` for a large run.

    Args:
        results: a results file path, or an open :class:`basewise.results.Results`.
        score: per-position score (see :func:`position_scores`). Default None (kind's default).
        task, bin: the ISM task and output bin. Defaults 0, 0.
        regions: region indices to read. Default None (all finished regions).

    Returns:
        DataFrame with the columns of :func:`top_positions` less ``rank``, in region order and
        scored-sequence order (so descending genome coordinates in ``-`` regions).

    Example:
        >>> # to_pandas("attr.h5", regions=[0, 1]).groupby("region").score.sum()
    """
    parts = []
    with _Opened(results) as r:
        score, skipped, it = _iter_scores(r, score, task, bin, regions)
        for ps in it:
            m, p = ps.values.shape
            parts.append(_position_frame(ps, np.repeat(np.arange(m), p), np.tile(np.arange(p), m)))
        kind = r.kind
    out = pd.concat(parts, ignore_index=True)
    out.attrs.update(score=score, skipped=skipped, kind=kind)
    return out


def to_xarray(results: ResultsLike, regions: Optional[Sequence[int]] = None):
    """The raw scores of the finished regions as an ``xarray.Dataset`` with named dimensions.

    Needs xarray (``pip install xarray``). Loads the selected regions into memory.

    Args:
        results: a results file path, or an open :class:`basewise.results.Results`.
        regions: region indices to read. Default None (all finished regions).

    Returns:
        Dataset with ``scores``: ISM dims (region, position, base, task, bin), attribution dims
        (region, base, position); ``sequence`` (region, seq_position) int8 base indices 0-4 of
        the scored sequences; coordinates region (indices in the results file), region_name, chrom,
        start, end, strand (along region), base (A, C, G, T), position (positions in the scored
        sequence; ISM positions start at ``start_pos``). ``attrs``: kind, arguments (JSON),
        path, skipped.

    Example:
        >>> # ds = to_xarray("ism.h5"); ds.scores.sel(base="T", task=0, bin=0)
    """
    try:
        import xarray as xr
    except ImportError:
        raise ImportError("to_xarray needs xarray: pip install xarray") from None
    import json

    from .results import _index

    with _Opened(results) as r:
        if r.scores is None:
            raise ValueError(f"results: {r.path!r} has no finished regions")
        idx, skipped = _selection(r, regions)
        if len(idx) == 0:
            raise ValueError(f"results: {r.path!r} has no finished regions")
        sel = _index(idx)
        scores = np.asarray(r.scores[sel])
        seqs = np.asarray(r.sequences[sel])
        reg = r.regions.iloc[idx]
        coords: Dict[str, Any] = {"region": idx, "base": list("ACGT"),
                                  "seq_position": np.arange(seqs.shape[1])}
        for col in ("name", "chrom", "start", "end", "strand"):  # "name" would clash with DataArray.name
            coords["region_name" if col == "name" else col] = ("region", reg[col].to_numpy())
        if r.kind == "ism":
            dims = ("region", "position", "base", "task", "bin")
            off = _ism_offset(r)
            coords.update(position=off + np.arange(scores.shape[1]), task=np.arange(scores.shape[3]),
                          bin=np.arange(scores.shape[4]))
        else:
            dims = ("region", "base", "position")
            coords["position"] = np.arange(scores.shape[2])
        ds = xr.Dataset({"scores": (dims, scores), "sequence": (("region", "seq_position"), seqs)}, coords=coords)
        ds.attrs.update(kind=r.kind, arguments=json.dumps(r.arguments, sort_keys=True), path=r.path,
                        skipped=skipped)
    return ds


# ---------------------------------------------------------------------------------------------
# genome tracks
# ---------------------------------------------------------------------------------------------
def read_chrom_sizes(source: Union[str, os.PathLike, Dict[str, int]]) -> Dict[str, int]:
    """Chromosome sizes from a dict, a genome FASTA (its ``.fai`` index, built by pyfaidx when
    missing), a ``.fai`` file or a two-column ``chrom.sizes`` file.

    Example:
        >>> read_chrom_sizes({"chr1": 1000})
        {'chr1': 1000}
    """
    if isinstance(source, dict):
        return {str(k): int(v) for k, v in source.items()}
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ValueError(f"chrom_sizes: file {path!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b">" or head == b"\x1f\x8b":  # FASTA (plain or bgzip)
        import pyfaidx

        try:
            fa = pyfaidx.Fasta(path, rebuild=False)
        except Exception as e:  # pyfaidx raises many types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"chrom_sizes: cannot read {path!r} as FASTA (pyfaidx: {first})") from None
        with fa:
            return {k: len(fa[k]) for k in fa.keys()}
    sizes: Dict[str, int] = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            f = line.split()
            if not f or f[0].startswith("#"):
                continue
            try:
                sizes[f[0]] = int(f[1])
            except (IndexError, ValueError):
                raise ValueError(f"chrom_sizes: {path}:{lineno}: expected 'chrom<TAB>size' (a chrom.sizes "
                                 "or .fai file) or a FASTA file") from None
    if not sizes:
        raise ValueError(f"chrom_sizes: {path!r} lists no chromosomes")
    return sizes


def _check_genomic(r) -> None:
    inputs = (r.info or {}).get("inputs") or {}
    if "fasta" in inputs and "bed" not in inputs:
        raise ValueError(
            f"results: the regions of {r.path!r} are the records of a FASTA of sequences ({inputs['fasta']}), "
            "with no genome coordinates (chrom, start, end); a bedGraph or bigWig needs a run on genome "
            "intervals (--bed FILE --genome FASTA)"
        )


def _merged_track(r, score: Optional[str], merge: str, task: int, bin: int, sizes: Optional[Dict[str, int]]
                  ) -> Tuple[str, int, Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]], Dict[str, int]]:
    """Per chromosome the merged score as runs (starts, ends, values), and the header sizes.

    Positions outside a chromosome (regions N-padded past its ends, ``--on-bad-interval pad``)
    are dropped: those before 0 always, those past the end when ``sizes`` are given (a real base
    there means the sizes are not the run's genome: ValueError).
    """
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {list(MERGES)}, got {merge!r}")
    _check_genomic(r)
    score, skipped, it = _iter_scores(r, score, task, bin, None)
    pos: Dict[str, List[np.ndarray]] = {}
    val: Dict[str, List[np.ndarray]] = {}
    ends: Dict[str, int] = {}
    for ps in it:
        g = ps.genome_positions()  # (n, P)
        chroms = ps.regions["chrom"].to_numpy()
        for c in np.unique(chroms):
            rows = np.flatnonzero(chroms == c)
            if sizes is not None and c not in sizes:
                raise ValueError(f"chrom_sizes: chromosome {c!r} of the regions is not in the chromosome sizes "
                                 f"({', '.join(list(sizes)[:5])}{', ...' if len(sizes) > 5 else ''})")
            gc, v = g[rows], ps.values[rows]  # (m, P)
            inside = gc >= 0
            if sizes is not None:
                past = gc >= sizes[c]
                bad = past & (ps.ref[rows] != 4)  # a real base past the end: other chromosome sizes
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    raise ValueError(
                        f"chrom_sizes: region {int(ps.index[rows[i]])} ({ps.regions['name'].iat[rows[i]]}) has a "
                        f"base at {c}:{int(gc[i, j])}, past the size of {c} ({sizes[c]}); are these the "
                        "chromosome sizes of the run's genome?")
                inside &= ~past
            keep = inside & ~np.isnan(v)
            pos.setdefault(c, []).append(gc[keep])
            val.setdefault(c, []).append(v[keep])
            ends[c] = max(ends.get(c, 1), int(ps.regions["end"].to_numpy()[rows].max()))
    track = {}
    for c in sorted(pos):
        p, v = np.concatenate(pos[c]), np.concatenate(val[c])
        if len(p) == 0:
            continue
        order = np.argsort(p, kind="stable")
        p, v = p[order], v[order]
        first = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # start of each position's group
        upos = p[first]
        if merge == "mean":
            uval = np.add.reduceat(v, first) / np.diff(np.r_[first, len(p)])
        else:
            uval = np.maximum.reduceat(v, first)
        # runs of adjacent positions with equal values -> one interval each
        brk = np.flatnonzero(np.r_[True, (upos[1:] != upos[:-1] + 1) | (uval[1:] != uval[:-1])])
        run_end = np.r_[brk[1:], len(upos)]
        track[c] = (upos[brk], upos[run_end - 1] + 1, uval[brk])
    return score, skipped, track, dict(sizes) if sizes is not None else ends


def to_bedgraph(results: ResultsLike, path: Union[str, os.PathLike], score: Optional[str] = None,
                merge: str = "mean", task: int = 0, bin: int = 0,
                chrom_sizes: Union[None, str, os.PathLike, Dict[str, int]] = None) -> Dict[str, Any]:
    """Write a per-position score of the finished regions as a bedGraph, merged over regions.

    Where regions overlap, the scores of one genome position are merged: their mean (default)
    or their max. Adjacent positions with equal merged values share one line; positions with a
    NaN score, positions outside every region and positions outside the chromosome (regions
    N-padded past its ends, ``--on-bad-interval pad``: before 0 always, past the end when
    ``chrom_sizes`` are given) are left out. Lines are sorted by chromosome
    (as text) and start, the order ``bedGraphToBigWig`` needs; no track line. Values are written
    with 7 significant digits. A path ending in ``.gz`` is gzip-compressed. The regions are read
    chunk by chunk, but the covered positions and their scores are gathered per chromosome before
    the merge (about 16 bytes per scored position and region).

    Args:
        results: a results file path, or an open :class:`basewise.results.Results` of a run on
            genome intervals (a run on a FASTA of sequences has no genome coordinates: ValueError).
        path: the bedGraph file to write.
        score: per-position score (see :func:`position_scores`). Default None (kind's default).
        merge: "mean" or "max" over overlapping regions. Default "mean".
        task, bin: the ISM task and output bin. Defaults 0, 0.
        chrom_sizes: chromosome sizes (as for :func:`export_bigwig`) to check the regions
            against (a bedGraph has no header): an unknown chromosome, or a base of a scored
            sequence past a chromosome's end, raises ValueError. Default None (no check).

    Returns:
        A dict: path, score, merge, intervals (lines written), positions (genome positions
        covered), chroms, skipped (unfinished regions left out).

    Example:
        >>> # to_bedgraph("ism.h5", "ism.bedGraph", score="max_abs", merge="max")
    """
    import gzip

    with _Opened(results) as r:
        sizes = None if chrom_sizes is None else read_chrom_sizes(chrom_sizes)
        score, skipped, track, _ = _merged_track(r, score, merge, task, bin, sizes)
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    n_lines = n_pos = 0
    with opener(path, "wt") as fh:
        for c, (starts, ends, values) in track.items():
            lines = [f"{c}\t{s}\t{e}\t{v:.7g}\n" for s, e, v in zip(starts.tolist(), ends.tolist(), values.tolist())]
            fh.writelines(lines)
            n_lines += len(lines)
            n_pos += int((ends - starts).sum())
    return {"path": path, "score": score, "merge": merge, "intervals": n_lines, "positions": n_pos,
            "chroms": len(track), "skipped": skipped}


def _pybigwig():
    try:
        import pyBigWig
    except ImportError:
        raise ImportError("writing a bigWig needs pyBigWig: pip install 'basewise[bigwig]' (or pip install "
                          "pyBigWig), or write a bedGraph instead") from None
    return pyBigWig


def export_bigwig(results: ResultsLike, path: Union[str, os.PathLike], score: Optional[str] = None,
                  merge: str = "mean", chrom_sizes: Union[None, str, os.PathLike, Dict[str, int]] = None,
                  task: int = 0, bin: int = 0) -> Dict[str, Any]:
    """Write a per-position score of the finished regions as a bigWig, merged over regions.

    Merging and the positions written are those of :func:`to_bedgraph`. Needs pyBigWig
    (``pip install 'basewise[bigwig]'``); the values are stored as float32 (bigWig's type).

    Args:
        results: a results file path, or an open :class:`basewise.results.Results` of a run on
            genome intervals.
        path: the bigWig file to write.
        score: per-position score (see :func:`position_scores`). Default None (kind's default).
        merge: "mean" or "max" over overlapping regions. Default "mean".
        chrom_sizes: the genome's chromosome sizes for the bigWig header: a genome FASTA (its
            ``.fai``, made by pyfaidx if missing), a ``.fai`` or ``chrom.sizes`` file, or a dict.
            Checked like in :func:`to_bedgraph`. Default None: the end of the last region on
            each chromosome, which makes a valid file, but genome browsers check the header
            against their assembly: give the real sizes for a track to load there.
        task, bin: the ISM task and output bin. Defaults 0, 0.

    Returns:
        A dict like :func:`to_bedgraph`'s, plus ``chrom_sizes_from`` ("regions" or the source).

    Example:
        >>> # export_bigwig("attr.h5", "attr.bw", score="attr_x_input", chrom_sizes="hg38.fa")
    """
    pyBigWig = _pybigwig()
    with _Opened(results) as r:
        sizes = None if chrom_sizes is None else read_chrom_sizes(chrom_sizes)
        score, skipped, track, sizes = _merged_track(r, score, merge, task, bin, sizes)
    path = os.fspath(path)
    header = [(c, int(sizes[c])) for c in sorted(sizes)]
    bw = pyBigWig.open(path, "w")
    if bw is None:  # pragma: no cover - pyBigWig returns None when it cannot create the file
        raise OSError(f"cannot write the bigWig {path!r}")
    n_lines = n_pos = 0
    try:
        bw.addHeader(header)
        for c, _ in header:
            if c not in track:
                continue
            starts, stops, values = track[c]
            if getattr(pyBigWig, "numpy", 0):  # built with numpy: arrays without Python lists
                bw.addEntries(np.array([c] * len(starts)), starts.astype(np.int64), ends=stops.astype(np.int64),
                              values=values.astype(np.float64))
            else:  # pragma: no cover - the PyPI wheels are built with numpy
                bw.addEntries([c] * len(starts), starts.tolist(), ends=stops.tolist(), values=values.tolist())
            n_lines += len(starts)
            n_pos += int((stops - starts).sum())
    finally:
        bw.close()
    return {"path": path, "score": score, "merge": merge, "intervals": n_lines, "positions": n_pos,
            "chroms": len(track), "skipped": skipped,
            "chrom_sizes_from": "regions" if chrom_sizes is None else
            (os.fspath(chrom_sizes) if not isinstance(chrom_sizes, dict) else "dict")}
