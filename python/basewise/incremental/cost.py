"""The cost model: what a plan costs each way, static (FLOPs and bytes) and measured (a timed probe).

Static: per node FLOPs (each operator's FLOP rule in :data:`.rules.OP_RULES`, else one per output
element) and activation bytes read and written, for full recomputation and for the incremental
path (window gathers and splices included), turned into time with fixed effective CPU rates
(:data:`_STATIC_FLOPS`, :data:`_STATIC_BYTES`). Measured: :func:`measure_plan` times one batch of
mutants each way and caches the :class:`IsmProbe` with the plan; ``engine="auto"`` decides on it
where it exists (see the package docstring for why).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from .._model import eval_mode, is_lightning_like, preserved_model_state
from .capture import _CONST, _INPUT, _LOCAL, _SYM, _Graph, _Node
from .executor import IncrementalPredictor
from .plan import IsmPlan, LayerInfo
from .rules import _flops_per_sample, _local_inputs

#: Static cost model (used only where no probe was measured): effective CPU rates that turn the
#: FLOPs and bytes of a node into seconds (``flops / _STATIC_FLOPS + bytes / _STATIC_BYTES``).
_STATIC_FLOPS = 3e10
_STATIC_BYTES = 3e9


def _numel(shape: Sequence[int]) -> int:
    """Elements per sample of a node's (B, ...) shape."""
    return int(np.prod([abs(s) for s in shape[1:]])) if len(shape) > 1 else 1


def _node_bytes(n: _Node, itemsize: int) -> float:
    """Activation bytes an op reads and writes per sample at full length (weights excluded:
    they are read once per batch)."""
    ins = sum(_numel(i.shape) for i in n.inputs if i.kind not in (_CONST, _SYM) and i.shape)
    return float((ins + (_numel(n.shape) if n.shape else 0)) * itemsize)


def _costs(g: _Graph, plan: IsmPlan) -> None:
    """FLOPs and bytes per mutant of both paths, per node, and the static predicted speed-up.

    Bytes of the incremental path: a local op moves its window's share of the full op's bytes
    twice (the window and its gathered or spliced input); a global op reading a windowed local
    tensor also copies that tensor's reference rows into a full-length buffer (the splice)."""
    full = incr = bfull = bincr = 0.0
    isz = 4
    for n in g.nodes:
        if n.kind in (_CONST, _SYM, _INPUT):
            continue
        f = _flops_per_sample(n)
        by = _node_bytes(n, isz)
        op = str(n.target)
        if n.kind == _LOCAL:
            frac = n.width / n.length if n.length else 0.0
            fi = 0.0 if n.rule == "delta" else f * frac
            bi = 2.0 * by * frac
            if n.rule == "delta":
                fi = float(n.shape[1] * n.params["k"]) * 2
                bi = float(2 * n.shape[1] * n.width * isz)
            kind = "delta" if n.rule == "delta" else ("local" if n.width else "unchanged")
            li = LayerInfo(n.name, op, kind, n.length, n.width, f, fi,
                           f"ldim={n.ldim} demand=[{n.dlo},{n.dhi})", by, bi)
        else:
            fi, bi = f, by
            kind = "global"
            note = n.note
            if n.glinear == "reduce":
                x = _local_inputs(n)[0]
                frac = x.width / x.length if x.length else 1.0
                fi, bi = f * frac, 2.0 * by * frac
                kind = "linear-global"
            elif n.glinear == "flatten":
                fi = bi = 0.0
                kind = "linear-global"
            elif n.glinear == "fc":
                x = _local_inputs(n.inputs[0])[0]
                frac = x.width / x.length if x.length else 1.0
                fi, bi = f * frac, 2.0 * by * frac
                kind = "linear-global"
            else:
                for i in n.inputs:  # splices of windowed local inputs into their reference
                    if i.kind == _LOCAL and i.width:
                        bi += 2.0 * _numel(i.shape) * isz
            li = LayerInfo(n.name, op, kind, None, None, f, fi, note, by, bi)
        full += f
        incr += fi
        bfull += by
        bincr += bi
        plan.layers.append(li)
    plan.flops_full = full
    plan.flops_incremental = incr
    plan.bytes_full = bfull
    plan.bytes_incremental = bincr
    plan.predicted_flop_ratio = full / incr if incr > 0 else float("inf")
    t_full = full / _STATIC_FLOPS + bfull / _STATIC_BYTES
    t_incr = incr / _STATIC_FLOPS + bincr / _STATIC_BYTES
    plan.static_ratio = t_full / t_incr if t_incr > 0 else float("inf")


@dataclasses.dataclass
class IsmProbe:
    """One timed batch each way (see :func:`measure_plan`).

    Attributes:
        full_s: seconds per mutant of full recomputation.
        incremental_s: seconds per mutant of the incremental path.
        ratio: ``full_s / incremental_s``, the predicted speed-up.
        batch_size: mutants per timed batch of the incremental path.
        full_batch: mutants in the timed full-recompute batch (smaller than ``batch_size`` when
            a batch would exceed the probe's time budget).
        full_setup_s: seconds per sequence the full path spends before its mutants (the
            reference forward).
        incremental_setup_s: the same for the incremental path (predictor and the reference
            activations it caches).
    """

    full_s: float
    incremental_s: float
    ratio: float
    batch_size: int
    full_batch: int
    full_setup_s: float = 0.0
    incremental_setup_s: float = 0.0

    def speedup(self, n_mutants: Optional[int] = None) -> float:
        """Predicted speed-up of a job of ``n_mutants`` mutants of one sequence, set-up included
        (None: per mutant, i.e. :attr:`ratio`).

        Example:
            >>> IsmProbe(2.0, 0.5, 4.0, 64, 64, 2.0, 2.5).speedup(3)
            2.0
        """
        if n_mutants is None:
            return self.ratio
        inc = n_mutants * self.incremental_s + self.incremental_setup_s
        return (n_mutants * self.full_s + self.full_setup_s) / max(inc, 1e-12)


def measure_plan(plan: IsmPlan, full_factory: Optional[Callable] = None, batch_size: int = 64,
                 budget_s: float = 1.5, refresh: bool = False) -> IsmProbe:
    """Time one batch of mutants with each engine; cache and return the :class:`IsmProbe`.

    The cost model's decision (module docstring): counting FLOPs and bytes with machine constants
    cannot see what dominates real runs (a softmax over a 2-wide pool window runs 100x below
    the memory bandwidth; a conv on a 15-wide window runs below the GEMM peak), so the speed-up
    ``engine="auto"`` decides on is measured, once per plan, batch size, thread count, device
    and dtype: a random reference, mutants at the positions closest to the centre that the
    output can see, batched as ``ISM_predict`` batches them (consecutive positions, the three
    alternative bases of each), one warm-up each way, then timed batches of each engine in
    alternation, keeping each side's fastest (up to 5 a side within ``budget_s`` each): a load
    spike on a shared machine slows a run, never speeds one up. The full batch shrinks (to at
    least 4 mutants) when one would take more than ``budget_s``.

    Args:
        plan: a supported plan.
        full_factory: ``ref_idx -> predictor`` of full recomputation (the ISM engine's). Default
            None (``basewise.ism.FullPredictor`` on the plan's model and transform).
        batch_size: mutants per batch, as in ``ISM_predict``. Default 64.
        budget_s: time budget of the timed full batch in seconds. Default 1.5.
        refresh: measure again even if a probe is cached. Default False.

    Returns:
        The :class:`IsmProbe` (also cached in the plan).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 9, padding=4), torch.nn.ReLU(),
        ...                           torch.nn.Conv1d(8, 1, 9, padding=4)).eval()
        >>> measure_plan(plan_ism(net, 500), batch_size=16).full_batch
        16
    """
    import time

    if not plan.supported or plan._graph is None:
        raise ValueError(f"plan: the plan is not supported ({plan.reason})")
    batch_size = int(batch_size)
    dev = plan.device or torch.device("cpu")
    key = (batch_size, torch.get_num_threads(), str(dev), plan.dtype)
    if not refresh and key in plan._probes:
        return plan._probes[key]
    g = plan._graph
    model = g.model_ref() if g.model_ref is not None else None
    if model is None:
        raise ValueError("plan: the model it was made for no longer exists")
    dtype = plan.dtype or torch.float32
    if full_factory is None:
        from .._model import make_forward
        from ..ism import FullPredictor

        transform = g.transform
        if transform is None and g.transform_fn_ref is not None:
            transform = g.transform_fn_ref()
            if transform is None:
                raise ValueError("plan: the prediction transform it was made for no longer exists")
        if is_lightning_like(model):
            transform = None
        forward = make_forward(model, transform)
        full_factory = lambda r: FullPredictor(forward, r, dtype, check=False)  # noqa: E731
    L = plan.length
    gen = torch.Generator().manual_seed(12)
    ref = torch.randint(0, 4, (1, L), generator=gen, dtype=torch.uint8)  # (1, L) base indices
    reach = plan.reach if plan.reach is not None else np.ones(L, dtype=bool)
    cand = np.nonzero(reach)[0]
    if cand.size == 0:
        cand = np.arange(L)
    cand = cand[np.argsort(np.abs(cand - L // 2), kind="stable")]
    # as ISM_predict batches them: consecutive positions, the 3 alternative bases of each
    n = max(batch_size, 2)
    pos = np.sort(np.resize(cand[:-(-n // 3)], -(-n // 3)))  # (ceil(n / 3),)
    pos = torch.as_tensor(pos).repeat_interleave(3)[:n]  # (n,)
    base = (ref[0, pos].long() + torch.arange(1, 4).repeat(-(-n // 3))[:n]) % 4
    muts = torch.stack([torch.zeros(n, dtype=torch.long), pos, base], 1).to(dev)  # (n, 3)
    ref = ref.to(dev)

    def timed(fn: Callable[[], Any]) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    with torch.inference_mode(), preserved_model_state(model):
        eval_mode(model)
        full = full_factory(ref)
        per = timed(lambda: full.predict(muts[:2])) / 2  # the model's forward first: warm-up
        IncrementalPredictor(plan, ref)  # prepares the plan's static state, as a first call does
        t0 = time.perf_counter()
        inc = IncrementalPredictor(plan, ref)
        inc.reference()
        t_setup = time.perf_counter() - t0
        nf = int(min(batch_size, max(4, budget_s // max(per, 1e-9))))
        timed(lambda: inc.predict(muts[:batch_size]))  # first use: index tables, caches
        # alternate the two, keep each side's fastest run: a load spike on this shared machine
        # slows one run, never speeds one up; up to 5 runs a side while they fit the budget
        tf: List[float] = []
        ti: List[float] = []
        while len(tf) < 5 and (not tf or sum(tf) + min(tf) <= budget_s):
            tf.append(timed(lambda: full.predict(muts[:nf])))
            if len(ti) < 5 and (not ti or sum(ti) + min(ti) <= budget_s):
                ti.append(timed(lambda: inc.predict(muts[:batch_size])))
        while len(ti) < 3 and sum(ti) + min(ti) <= budget_s:
            ti.append(timed(lambda: inc.predict(muts[:batch_size])))
        t_full, t_inc = min(tf) / nf, min(ti) / batch_size
    pr = IsmProbe(t_full, t_inc, t_full / max(t_inc, 1e-12), batch_size, nf, per, t_setup)
    plan._probes[key] = pr
    return pr

