"""What a plan is: :class:`IsmPlan` (one model at one input length) and its :class:`LayerInfo` rows.

Plans are made by :func:`basewise.incremental.plan_ism` (:mod:`.planner`), costed by :mod:`.cost`
and run by :class:`basewise.incremental.IncrementalPredictor` (:mod:`.executor`). The thresholds
``engine="auto"`` decides with live here, next to the methods that apply them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import numpy as np
import torch

from .capture import _LOCAL, _Graph

if TYPE_CHECKING:  # pragma: no cover
    from .cost import IsmProbe


#: Where no timed probe was measured (small jobs), ``engine="auto"`` uses the incremental path
#: when the plan is supported and its static predicted speed-up (FLOPs and bytes,
#: :attr:`IsmPlan.static_ratio`) exceeds this value: a margin for what the static model misses.
INCREMENTAL_MIN_RATIO = 1.5

#: With a timed probe (:meth:`IsmPlan.measure`), ``engine="auto"`` uses the incremental path when
#: the measured speed-up per mutant exceeds this value (a margin for timing noise).
PROBE_MIN_RATIO = 1.05


@dataclasses.dataclass
class LayerInfo:
    """One operation of the captured graph, as the plan treats it.

    Attributes:
        name: graph node name.
        op: ATen operator (e.g. ``"aten.conv1d.default"``).
        kind: ``"local"`` (computed on windows), ``"delta"`` (first convolution from weight
            differences), ``"global"`` (full length on spliced tensors), ``"linear-global"``
            (applied to the window's change only) or ``"unchanged"`` (no substitution reaches
            the part of it that is used).
        length: length of the output along its length axis (None for global tensors).
        window: static window width (None for global tensors).
        flops_full: FLOPs per mutant of full recomputation.
        flops_incremental: FLOPs per mutant of the incremental path.
        note: free text (e.g. why an op is global).
        bytes_full: bytes read and written per mutant by full recomputation (activations).
        bytes_incremental: the same for the incremental path, window gathers and splices into
            full-length tensors included.
    """

    name: str
    op: str
    kind: str
    length: Optional[int] = None
    window: Optional[int] = None
    flops_full: float = 0.0
    flops_incremental: float = 0.0
    note: str = ""
    bytes_full: float = 0.0
    bytes_incremental: float = 0.0


class IsmPlan:
    """How single-substitution mutants of one model at one input length are predicted.

    Built by :func:`plan_ism`. Attributes:

    Attributes:
        supported: whether :class:`IncrementalPredictor` can run this model.
        reason: why not (empty if supported).
        layers: list of :class:`LayerInfo`, one per operation that depends on the input.
        predicted_flop_ratio: FLOPs of full recomputation / FLOPs of the incremental path, per
            mutant, averaged over positions (1.0 if unsupported).
        static_ratio: the static cost model's predicted speed-up (FLOPs and bytes moved, see
            :data:`_STATIC_FLOPS`), used where nothing was measured.
        predicted_ratio: the speed-up ``engine="auto"`` decides on: the timed probe's
            (:meth:`measure`) when one was run, else ``static_ratio``.
        length: input length L.
        n_local: number of operations computed on windows.

    ``str(plan)`` gives a readable report.
    """

    def __init__(self, supported: bool, reason: str = "", length: int = 0) -> None:
        self.supported = supported
        self.reason = reason
        self.length = length
        self.layers: List[LayerInfo] = []
        self.predicted_flop_ratio = 1.0
        #: (L,) bool: whether a substitution at each position can change the output at all
        self.reach: Optional[np.ndarray] = None
        self.flops_full = 0.0
        self.flops_incremental = 0.0
        self.bytes_full = 0.0
        self.bytes_incremental = 0.0
        self.static_ratio = 1.0
        #: timed probes, {(batch_size, threads, device, dtype): IsmProbe}
        self._probes: Dict[Any, "IsmProbe"] = {}
        self._graph: Optional[_Graph] = None
        self.device: Optional[torch.device] = None
        self.dtype: Optional[torch.dtype] = None
        self._static: Dict[Any, Dict[str, Any]] = {}

    def check_positions(self, start: int = 0, end: Optional[int] = None, limit: int = 8) -> List[int]:
        """Positions in [start, end) where the plan's rules change: the safety net's spot checks.

        A wrong window rule shows first where a rule changes from one position to the next: the
        sequence edges (windows shifted inward), where a substitution stops being read (crops,
        stride remainders, pool gaps), and where a window offset stops following the position
        (clipping at a demanded region's bounds). Candidates are ranked edges first, then such
        transitions spread over the range, then the middle; at most ``limit`` are returned.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 5, padding=2), torch.nn.ReLU(),
            ...                           torch.nn.Conv1d(4, 1, 5)).eval()
            >>> plan_ism(net, 40).check_positions()[:2]
            [0, 39]
        """
        end = self.length if end is None else end
        if end <= start:
            return []
        cand: List[int] = [start, end - 1]
        trans: List[int] = []
        g = self._graph
        if g is not None:
            def edges(flag: np.ndarray) -> None:
                for t in np.nonzero(flag[1:] != flag[:-1])[0]:
                    trans.extend((int(t), int(t) + 1))
            if self.reach is not None:
                edges(self.reach)
            for n in g.nodes:
                if n.kind != _LOCAL or n.lo is None:
                    continue
                lo = np.maximum(n.lo, n.dlo)
                hi = np.minimum(n.hi, n.dhi)
                valid = hi > lo
                edges(valid)
                if n.off is not None and n.width:
                    edges(valid & (n.off == lo))
        trans = sorted({t for t in trans if start <= t < end})
        if len(trans) > limit - 3:  # spread the transitions over the range
            idx = np.linspace(0, len(trans) - 1, max(1, limit - 3)).round().astype(int)
            trans = [trans[i] for i in idx]
        cand += trans + [(start + end) // 2]
        out: List[int] = []
        for c in cand:
            if c not in out and start <= c < end:
                out.append(c)
        return out[:limit]

    def probe(self, batch_size: Optional[int] = None) -> Optional["IsmProbe"]:
        """The timed probe measured for ``batch_size`` (None: any) under the current thread
        count, or None."""
        thr = torch.get_num_threads()
        best = None
        for (b, t, _, _), pr in self._probes.items():
            if t != thr:
                continue
            if b == batch_size:
                return pr
            if batch_size is None or best is None or abs(b - batch_size) < abs(best.batch_size - batch_size):
                best = pr
        return best

    @property
    def predicted_ratio(self) -> float:
        """Predicted speed-up per mutant: the timed probe's if any, else the static model's."""
        pr = self.probe()
        return pr.ratio if pr is not None else self.static_ratio

    def measure(self, full_factory: Optional[Callable] = None, batch_size: int = 64,
                budget_s: float = 1.5, refresh: bool = False) -> "IsmProbe":
        """Time one batch of mutants with each engine and cache the result on the plan.

        See :func:`~basewise.incremental.measure_plan` (this method calls it).

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 9, padding=4), torch.nn.ReLU(),
            ...                           torch.nn.Conv1d(8, 1, 9, padding=4)).eval()
            >>> plan_ism(net, 500).measure(batch_size=32).ratio > 0
            True
        """
        from .cost import measure_plan

        return measure_plan(self, full_factory, batch_size=batch_size, budget_s=budget_s, refresh=refresh)

    def prefers_incremental(self, full_factory: Optional[Callable] = None, batch_size: int = 64,
                            measure: bool = True) -> bool:
        """Whether ``engine="auto"`` should use the incremental path.

        Uses the probe for ``batch_size`` if cached; else measures one (``measure=True`` and a
        supported plan); else the static model (``static_ratio > INCREMENTAL_MIN_RATIO``).
        """
        if not self.supported:
            return False
        pr = self.probe(batch_size)
        if pr is None and measure:
            try:
                pr = self.measure(full_factory, batch_size)
            except Exception:  # noqa: BLE001 - a failing probe means no measurement, not an error
                pr = None
        if pr is not None:
            return pr.ratio > PROBE_MIN_RATIO
        return self.static_ratio > INCREMENTAL_MIN_RATIO

    @property
    def worthwhile(self) -> bool:
        """Supported and predicted faster: the probe's ratio above :data:`PROBE_MIN_RATIO` when
        one was measured, else the static ratio above :data:`INCREMENTAL_MIN_RATIO`."""
        if not self.supported:
            return False
        pr = self.probe()
        if pr is not None:
            return pr.ratio > PROBE_MIN_RATIO
        return self.static_ratio > INCREMENTAL_MIN_RATIO

    @property
    def n_local(self) -> int:
        return sum(1 for l in self.layers if l.kind in ("local", "delta"))

    def __repr__(self) -> str:
        return (f"IsmPlan(supported={self.supported}, length={self.length}, "
                f"predicted_flop_ratio={self.predicted_flop_ratio:.2f}, reason={self.reason!r})")

    def __str__(self) -> str:
        lines = [f"incremental ISM plan, input length {self.length}: "
                 + ("supported" if self.supported else f"NOT supported ({self.reason})")]
        if self.layers:
            lines.append(f"{'node':<28} {'op':<34} {'kind':<14} {'length':>7} {'window':>7} "
                         f"{'MFLOP full':>11} {'MFLOP incr':>11}  note")
            for l in self.layers:
                lines.append(
                    f"{l.name[:28]:<28} {l.op[:34]:<34} {l.kind:<14} "
                    f"{'' if l.length is None else l.length:>7} "
                    f"{'' if l.window is None else l.window:>7} "
                    f"{l.flops_full / 1e6:>11.3f} {l.flops_incremental / 1e6:>11.3f}  {l.note}")
        lines.append(f"FLOPs per mutant: full {self.flops_full / 1e6:.2f} M, incremental "
                     f"{self.flops_incremental / 1e6:.2f} M, predicted ratio "
                     f"{self.predicted_flop_ratio:.2f}x")
        lines.append(f"bytes per mutant: full {self.bytes_full / 1e6:.2f} MB, incremental "
                     f"{self.bytes_incremental / 1e6:.2f} MB; static cost model (FLOPs + bytes) "
                     f"predicted speed-up {self.static_ratio:.2f}x")
        for (b, t, dev, _), pr in self._probes.items():
            lines.append(f"timed probe ({dev}, {t} threads, batch size {b}): full "
                         f"{pr.full_s * 1e3:.3f} ms/mutant, incremental {pr.incremental_s * 1e3:.3f} "
                         f"ms/mutant, predicted speed-up {pr.ratio:.2f}x per mutant, "
                         f"{pr.speedup(3 * self.length):.2f}x for the {3 * self.length} mutants of one "
                         f"sequence (set-up: full {pr.full_setup_s:.3f} s, incremental "
                         f"{pr.incremental_setup_s:.3f} s)")
        return "\n".join(lines)

