"""Plots of ISM, attribution and attention scores (optional extra ``basewise[plot]``).

Every function returns a :class:`matplotlib.figure.Figure` (save it with ``fig.savefig``) and
draws into ``ax`` when one is given. Figures are made without ``pyplot``: no global figure
registry, no backend switch, nothing shown; they work headless (Agg).

Conventions follow gReLU's ``grelu.visualize``:

* :func:`plot_ism` takes the DataFrame ``ISM_predict`` returns for one sequence: rows A, C, G, T
  (the substituted base), columns labelled with the *reference* bases. ``method="heatmap"`` draws
  the (4, P) matrix; ``method="logo"`` draws, at each position, the reference letter with height
  ``-mean`` of the column's four values (the mean effect of mutating that base, sign flipped, as
  gReLU's ``plot_ISM``). Columns whose reference is N stay empty.
* :func:`plot_attributions` draws a (4, L) array as a sequence logo (letters scaled by score).
* :func:`plot_attention_matrix` draws an (L', L') attention matrix, "attended by" on the rows.

Example:
    >>> import numpy as np, pandas as pd
    >>> from basewise.plot import plot_ism
    >>> df = pd.DataFrame(np.random.default_rng(0).normal(size=(4, 6)), index=list("ACGT"),
    ...                   columns=list("ACGTAA"))
    >>> fig = plot_ism(df, method="logo")
    >>> type(fig).__name__
    'Figure'
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["plot_ism", "plot_ISM", "plot_attributions", "plot_attention_matrix", "ism_logo_heights"]

_BASES = "ACGT"
_COLORS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"basewise.plot needs {module}: pip install 'basewise[plot]' (matplotlib and logomaker)"
        ) from None


def _figure_and_ax(ax: Any, figsize: Tuple[float, float]):
    _need("matplotlib")
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(111)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_ism(ism: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(ism, pd.DataFrame):
        raise TypeError(
            "ism: expected the (4, P) DataFrame ISM_predict returns for one sequence (rows A, C, G, "
            f"T; columns the reference bases), got {type(ism).__name__}; for an array use "
            "pd.DataFrame(arr, index=list('ACGT'), columns=list(ref_seq))"
        )
    if ism.shape[0] != 4 or [str(i) for i in ism.index] != list(_BASES):
        raise ValueError(f"ism: expected 4 rows indexed A, C, G, T, got index {list(ism.index)}")
    return ism


def _slice(n: int, start_pos: Optional[int], end_pos: Optional[int], arg: str = "positions") -> Tuple[int, int]:
    start = 0 if start_pos is None else int(start_pos)
    end = n if end_pos is None else int(end_pos)
    if not 0 <= start < end <= n:
        raise ValueError(f"start_pos/end_pos: expected 0 <= start_pos < end_pos <= {n}, got {start}, {end}")
    return start, end


def ism_logo_heights(ism: pd.DataFrame) -> pd.DataFrame:
    """Letter heights of the ISM logo: (P, 4) DataFrame (columns A, C, G, T) holding ``-mean`` of
    each ISM column at its reference base and 0 elsewhere (N references: all 0).

    Example:
        >>> df = pd.DataFrame([[0, 0], [-1, 2], [-1, 2], [-2, 0]], index=list("ACGT"),
        ...                   columns=["A", "T"])
        >>> ism_logo_heights(df).values.tolist()
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]
    """
    ism = _check_ism(ism)
    means = -ism.to_numpy(dtype=np.float64).mean(axis=0)  # (P,)
    heights = np.zeros((ism.shape[1], 4))
    for i, ref in enumerate(ism.columns):
        b = _BASES.find(str(ref).upper())
        if b >= 0:
            heights[i, b] = means[i]
    return pd.DataFrame(heights, columns=list(_BASES))


def _position_ticks(ax, start: int, n: int, labels: Optional[Sequence[str]] = None, every: Optional[int] = None):
    if labels is not None and n <= 60:
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels(list(labels), fontsize=7)
        return
    step = every or max(1, int(10 ** np.floor(np.log10(max(n, 1) / 5))))
    if n / step > 12:
        step *= 5 if n / (step * 5) >= 2 else 2
    ticks = np.arange(-(start % step) % step, n, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(start + t) for t in ticks], fontsize=8)


def plot_ism(
    ism: pd.DataFrame,
    start_pos: Optional[int] = None,
    end_pos: Optional[int] = None,
    figsize: Tuple[float, float] = (8, 1.5),
    method: str = "heatmap",
    ax: Any = None,
    title: Optional[str] = None,
    highlight: Optional[Tuple[int, int]] = None,
    cmap: str = "RdBu_r",
    colorbar: bool = True,
    offset: int = 0,
) -> Any:
    """Plot the ISM of one sequence as a heatmap or a sequence logo (gReLU's ``plot_ISM``).

    Args:
        ism: (4, P) DataFrame from ``ISM_predict`` (rows A, C, G, T; columns reference bases).
        start_pos: first column to plot. Default None (0).
        end_pos: end of the plotted columns (exclusive). Default None (all).
        figsize: (width, height) in inches of a new figure. Default (8, 1.5).
        method: "heatmap" or "logo". Default "heatmap".
        ax: matplotlib axes to draw into. Default None (a new figure).
        title: axes title. Default None.
        highlight: (start, end) columns to shade (e.g. a motif). Default None.
        cmap: diverging colormap of the heatmap, centred at 0. Default "RdBu_r".
        colorbar: add a colour bar to the heatmap. Default True.
        offset: number added to column indices in the x tick labels (the sequence position of
            column 0, e.g. ISM's ``start_pos``). Default 0.

    Returns:
        The matplotlib Figure.

    Example:
        >>> df = pd.DataFrame(np.zeros((4, 3)), index=list("ACGT"), columns=list("ACG"))
        >>> plot_ism(df).axes[0].get_yticklabels()[0].get_text()
        'A'
    """
    ism = _check_ism(ism)
    if method not in ("heatmap", "logo"):
        raise ValueError(f"method: expected 'heatmap' or 'logo', got {method!r}")
    start, end = _slice(ism.shape[1], start_pos, end_pos)
    sub = ism.iloc[:, start:end]
    fig, ax = _figure_and_ax(ax, figsize)
    n = sub.shape[1]
    if method == "heatmap":
        values = sub.to_numpy(dtype=np.float64)  # (4, n)
        finite = values[np.isfinite(values)]
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(4))
        ax.set_yticklabels(list(_BASES), fontsize=8)
        ax.set_ylabel("mutant base", fontsize=8)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        _position_ticks(ax, start + offset, n, labels=[str(c) for c in sub.columns])
    else:
        logomaker = _need("logomaker")
        heights = ism_logo_heights(sub)
        logo = logomaker.Logo(heights, ax=ax, color_scheme=_COLORS)
        logo.style_spines(visible=False)
        logo.style_spines(spines=["left"], visible=True)
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.set_ylabel("-mean effect", fontsize=8)
        _position_ticks(ax, start + offset, n)
    if highlight is not None:
        x0, x1 = highlight[0] - start - 0.5, highlight[1] - start - 0.5
        if method == "heatmap":  # an outline: shading would change the heatmap's colours
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((x0, -0.5), x1 - x0, 4, fill=False, edgecolor="black", linewidth=1.2))
        else:
            ax.axvspan(x0, x1, color="0.5", alpha=0.15, linewidth=0, zorder=0)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


plot_ISM = plot_ism  # gReLU's name


def plot_attributions(
    attrs: Any,
    start_pos: int = 0,
    end_pos: Optional[int] = None,
    figsize: Tuple[float, float] = (20, 2),
    ticks: Optional[int] = None,
    highlight_positions: Optional[Sequence[int]] = None,
    highlight_intervals: Optional[Sequence[Tuple[int, int]]] = None,
    ylim: Optional[Tuple[float, float]] = None,
    ax: Any = None,
    title: Optional[str] = None,
) -> Any:
    """Sequence logo of base-level scores, e.g. from ``get_attributions`` (gReLU's
    ``plot_attributions``, returning the figure).

    Args:
        attrs: scores (4, L) or (1, 4, L), numpy or torch, channels A, C, G, T.
        start_pos: first position plotted. Default 0.
        end_pos: end of the plotted positions (exclusive). Default None (L; gReLU's default -1
            drops the last base).
        figsize: (width, height) in inches of a new figure. Default (20, 2).
        ticks: spacing of the x ticks. Default None (automatic).
        highlight_positions: positions to shade. Default None.
        highlight_intervals: (start, end) ranges to shade. Default None.
        ylim: y-axis limits. Default None.
        ax: matplotlib axes to draw into. Default None (a new figure).
        title: axes title. Default None.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = plot_attributions(np.eye(4)[:, [0, 1, 2, 3, 0]] * 0.5, figsize=(4, 1))
        >>> len(fig.axes)
        1
    """
    logomaker = _need("logomaker")
    a = _to_numpy(attrs)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[0] != 4:
        raise ValueError(f"attrs: expected scores of shape (4, L) or (1, 4, L), got {tuple(_to_numpy(attrs).shape)}")
    start, end = _slice(a.shape[1], start_pos, end_pos)
    df = pd.DataFrame(np.nan_to_num(a[:, start:end].T), columns=list(_BASES))  # (n, 4)
    fig, ax = _figure_and_ax(ax, figsize)
    for p in highlight_positions or ():
        ax.axvspan(p - start - 0.5, p - start + 0.5, color="gold", alpha=0.25, linewidth=0, zorder=0)
    for s, e in highlight_intervals or ():
        ax.axvspan(s - start - 0.5, e - start - 0.5, color="gold", alpha=0.25, linewidth=0, zorder=0)
    logo = logomaker.Logo(df, ax=ax, color_scheme=_COLORS)
    logo.style_spines(visible=False)
    logo.style_spines(spines=["left"], visible=True)
    _position_ticks(ax, start, end - start, every=ticks)
    if ylim is not None:
        ax.set_ylim(ylim)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_attention_matrix(
    attn: Any,
    start_pos: int = 0,
    end_pos: Optional[int] = None,
    highlight_intervals: Optional[pd.DataFrame] = None,
    figsize: Tuple[float, float] = (5, 4),
    ax: Any = None,
    cmap: str = "viridis",
    title: Optional[str] = None,
    **kwargs: Any,
) -> Any:
    """Heatmap of an attention matrix, e.g. one head of ``get_attention_scores`` (gReLU's
    ``plot_attention_matrix``).

    Args:
        attn: square (L', L') attention weights, numpy or torch; row i is query bin i.
        start_pos: genomic coordinate of the first bin's start. Default 0.
        end_pos: coordinate of the last bin's end. Default None (L', one unit per bin).
        highlight_intervals: DataFrame with start and end columns (coordinates) to outline.
            Default None.
        figsize: (width, height) in inches of a new figure. Default (5, 4).
        ax: matplotlib axes to draw into. Default None (a new figure).
        cmap: colormap. Default "viridis".
        title: axes title. Default None.
        **kwargs: passed to ``ax.imshow`` (e.g. vmin, vmax).

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = plot_attention_matrix(np.full((8, 8), 1 / 8))
        >>> fig.axes[0].get_xlabel()
        'Attended to'
    """
    a = _to_numpy(attn)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(
            f"attn: expected a square (L', L') matrix (select one sequence and head first), got {tuple(a.shape)}"
        )
    n = a.shape[0]
    end = n if end_pos is None else int(end_pos)
    if end <= start_pos:
        raise ValueError(f"end_pos: expected > start_pos ({start_pos}), got {end}")
    bin_size = (end - start_pos) / n
    fig, ax = _figure_and_ax(ax, figsize)
    im = ax.imshow(a, cmap=cmap, interpolation="nearest", origin="upper", **kwargs)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ticks = np.linspace(0, n - 1, min(n, 6)).round().astype(int)
    labels = [f"{start_pos + t * bin_size:g}" for t in ticks]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=7, rotation=45)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    if highlight_intervals is not None:
        from matplotlib.patches import Rectangle

        for row in highlight_intervals.itertuples():
            s = (row.start - start_pos) / bin_size
            e = (row.end - start_pos) / bin_size
            ax.add_patch(Rectangle((s - 0.5, s - 0.5), e - s, e - s, edgecolor="white", fill=False, linewidth=1))
    ax.set_ylabel("Attended by")
    ax.set_xlabel("Attended to")
    if title:
        ax.set_title(title, fontsize=9)
    return fig
