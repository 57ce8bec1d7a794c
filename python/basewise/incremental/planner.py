"""The planner: from a captured graph to an :class:`~.plan.IsmPlan`.

:func:`plan_ism` captures the model (:mod:`.capture`, cached per model), then :func:`_analyse`
runs the passes over the graph:

1. classify every node that depends on the input with the rule table (:func:`.rules._classify`):
   local nodes get their changed hull [lo[p], hi[p]) for every substitution position p;
2. mark global nodes that are linear in a window (:func:`.rules._classify_linear_global`);
3. demands, backwards: the positions of each local tensor some consumer reads (each window
   rule's ``demand``);
4. static windows: one width per tensor (the largest demanded hull; a hull wider than
   :data:`_FULL_FRACTION` of the demanded span becomes the whole span) and an offset per p;
5. pull-back: a tensor whose only consumer is a pool, crop or elementwise op takes exactly the
   window that consumer reads (the window rule's ``pull_back`` and ``reads``);
6. the first convolution on the one-hot input becomes ``delta``; reach; costs (:mod:`.cost`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from .._model import model_device, model_dtype
from .capture import (_GLOBAL, _LOCAL, _PLAN_CACHE, _PLAN_LOCK, _Graph, _Unsupported, _fingerprint,
                      _flatten_outputs, capture)
from .cost import _costs
from .plan import IsmPlan
from .rules import WINDOW_RULES, _classify, _classify_linear_global, _local_input_demands, _local_inputs


#: A window wider than this fraction of the demanded length is replaced by the whole demanded
#: region (one constant offset: no per-mutant shifts).
_FULL_FRACTION = 0.6


def plan_ism(model: Any, length: int, *, prediction_transform: Optional[Callable] = None,
             device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
             use_cache: bool = True, cached_only: bool = False) -> IsmPlan:
    """Capture ``model`` for inputs of ``length`` bases and plan incremental ISM.

    The model is captured with ``torch.export`` (see the module docstring for why) in evaluation
    mode; its state is restored afterwards. A gReLU ``LightningModel``-like object is captured
    whole (network, activation and its currently attached transform); for a plain module the
    ``prediction_transform`` (if any) is applied to its output, which may be a tuple.

    Never raises for an unsupported model: the returned plan has ``supported=False`` and a
    ``reason``.

    Args:
        model: ``torch.nn.Module`` or LightningModel-like object mapping (B, 4, L) one-hot to
            (B, T, L_out), (B, T) or (B,), or to a tuple reduced by ``prediction_transform``.
        length: input length L (positive int).
        prediction_transform: callable applied to a plain module's output. Default None.
        device: device the plan will run on. Default None (the model's device).
        dtype: floating dtype of the one-hot input. Default None (the model's dtype).
        use_cache: reuse a plan captured earlier for the same model structure, transform,
            length, device and dtype. Default True.
        cached_only: never capture: return the cached plan, or an unsupported plan whose reason
            says it was not captured yet (lets a caller skip the ~1 s capture for small jobs).
            Default False.

    Returns:
        An :class:`IsmPlan`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, padding=1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4 * 50, 2)).eval()
        >>> plan = plan_ism(net, 50)
        >>> plan.supported, plan.predicted_flop_ratio > 1
        (True, True)
    """
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    length = int(length)
    if not isinstance(model, torch.nn.Module):
        return IsmPlan(False, "the model is not a torch.nn.Module", length)
    if isinstance(model, torch.jit.ScriptModule):
        return IsmPlan(False, "a TorchScript model cannot be captured by torch.export (it runs with full "
                              "recompute); pass the eager module or a torch.export program instead", length)
    device = torch.device(device) if device is not None else model_device(model)
    dtype = dtype if dtype is not None else model_dtype(model)
    if dtype != model_dtype(model):
        return IsmPlan(False, f"the incremental engine runs in the model's dtype ({model_dtype(model)}), "
                              f"not {dtype} under autocast", length)
    key = pins = None
    if use_cache or cached_only:
        fp, pins = _fingerprint(model, prediction_transform)
        key = (length, str(device), dtype, fp)
        with _PLAN_LOCK:
            cached = _PLAN_CACHE.get(model, {}).get(key)
        if cached is not None:
            return cached[0]
    if cached_only:
        return IsmPlan(False, "not captured yet (cached_only=True)", length)
    try:
        plan = _plan(model, length, prediction_transform, device, dtype)
    except Exception as e:  # noqa: BLE001 - documented: never raises for a model it cannot plan
        msg = str(e).strip().split("\n")[0][:300]
        return IsmPlan(False, f"planning failed: {type(e).__name__}: {msg}", length)
    if use_cache and key is not None:
        with _PLAN_LOCK:
            try:
                per_model = _PLAN_CACHE.setdefault(model, {})
                while len(per_model) >= 8:  # e.g. a fresh lambda transform per call
                    per_model.pop(next(iter(per_model)))
                per_model[key] = (plan, pins)
            except TypeError:
                pass
    return plan


def ism_plan_report(model: Any, length: int, *, prediction_transform: Optional[Callable] = None,
                    batch_size: int = 64, measure: bool = True) -> str:
    """A readable report of how ``ISM_predict`` would predict mutants of ``model``.

    Lists every operation that depends on the input with its kind (local, delta, linear-global,
    global, unchanged), output length, window width, FLOPs and bytes per mutant, then the
    predicted FLOP ratio, the static cost model's speed-up and (``measure=True``) the timed
    probe's (:func:`measure_plan`: one batch each way, cached with the plan, which
    ``engine="auto"`` then decides on), and whether ``engine="auto"`` would use the incremental
    path; or why the model is not supported.

    Args:
        model: the model (as for :func:`plan_ism`).
        length: input length L.
        prediction_transform: as for :func:`plan_ism`. Default None.
        batch_size: mutants per batch of the probe, as in ``ISM_predict``. Default 64.
        measure: run (or reuse) the timed probe. Default True.

    Returns:
        The report (str).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 9, padding=4), torch.nn.ReLU(),
        ...                           torch.nn.Conv1d(4, 1, 9, padding=4)).eval()
        >>> "predicted speed-up" in ism_plan_report(net, 300)
        True
    """
    plan = plan_ism(model, length, prediction_transform=prediction_transform)
    probe_note = ""
    if measure and plan.supported:
        try:
            plan.measure(batch_size=batch_size)
        except Exception as e:  # noqa: BLE001 - the report still describes the plan
            probe_note = f"\ntimed probe failed ({type(e).__name__}: {e}); the static model decides"
    if plan.worthwhile:
        verdict = f"engine='auto' uses the incremental path (predicted speed-up {plan.predicted_ratio:.2f}x)"
    else:
        verdict = "engine='auto' uses full recomputation"
    return f"{plan}{probe_note}\n{verdict}"


def _plan(model: torch.nn.Module, length: int, transform: Optional[Callable],
          device: torch.device, dtype: torch.dtype) -> IsmPlan:
    try:
        g = capture(model, length, transform, device, dtype)
        plan = _analyse(g, length)
    except _Unsupported as e:
        return IsmPlan(False, str(e), length)
    plan.device = device
    plan.dtype = dtype
    return plan


def _analyse(g: _Graph, length: int) -> IsmPlan:
    L = length
    P = np.arange(L, dtype=np.int64)
    inp = g.input
    assert inp is not None
    inp.kind = _LOCAL
    inp.rule = "input"
    inp.ldim = 2
    inp.length = L
    inp.lo, inp.hi = P.copy(), P + 1

    for n in g.nodes:
        if n.kind != _GLOBAL:
            continue
        try:
            _classify(n, L)
        except Exception as e:  # a rule that cannot read its node makes the node global
            n.kind = _GLOBAL
            n.note = f"no rule ({type(e).__name__})"

    # linear-global patterns
    for n in g.nodes:
        if n.kind == _GLOBAL and not n.glinear:
            _classify_linear_global(n)

    # demands, backwards
    out_nodes = _flatten_outputs(g.outputs)
    out_set = {g.by_fx[o] for o in out_nodes if o in g.by_fx}
    for n in g.nodes:
        if n.kind == _LOCAL:
            n.dlo, n.dhi = (0, n.length) if n in out_set else (n.length, 0)
    for n in reversed(g.nodes):
        if n.kind != _LOCAL:
            # global consumers demand their local inputs in full
            for i in n.inputs:
                if i.kind == _LOCAL:
                    i.dlo, i.dhi = 0, i.length
            continue
        if n.dlo >= n.dhi:
            continue
        for i, (qlo, qhi) in _local_input_demands(n):
            qlo, qhi = max(0, qlo), min(i.length, qhi)
            if qlo < qhi:
                i.dlo, i.dhi = min(i.dlo, qlo), max(i.dhi, qhi)

    # static windows
    for n in g.nodes:
        if n.kind != _LOCAL:
            continue
        lo = np.maximum(n.lo, n.dlo)
        hi = np.minimum(n.hi, n.dhi)
        w = int(np.max(np.where(hi > lo, hi - lo, 0))) if L else 0
        if w == 0:
            n.width = 0
            n.off = np.zeros(L, dtype=np.int64)
            continue
        span = n.dhi - n.dlo
        if w >= _FULL_FRACTION * span:
            n.width = span
            n.off = np.full(L, n.dlo, dtype=np.int64)
        else:
            n.width = w
            n.off = np.clip(np.where(hi > lo, lo, n.dlo), n.dlo, n.dhi - w).astype(np.int64)

    # pull back: a tensor whose only consumer is a pool / crop / pointwise op gets exactly the
    # window that consumer reads, so the consumer uses it without a gather (fastISM's segments)
    for n in reversed(g.nodes):
        if n.kind != _LOCAL or n.width == 0 or n.rule in ("input", "conv", "tconv") or n in out_set \
                or len(n.consumers) != 1:
            continue  # a convolution keeps its own window: widening it costs more than a gather
        c = n.consumers[0]
        if c.kind != _LOCAL or c.width == 0 or len(_local_inputs(c)) != 1:
            continue
        rule = WINDOW_RULES[c.rule]
        if not rule.pull_back:
            continue
        (_, q, w, _), = rule.reads(c)[0]  # the window c reads of n, its one local input
        if w >= n.length:
            n.width, n.off = n.length, np.zeros(L, dtype=np.int64)
        else:
            n.width, n.off = w, np.clip(q, 0, n.length - w).astype(np.int64)

    # first-layer delta: conv1d reading the one-hot input directly
    for n in g.nodes:
        if n.kind == _LOCAL and n.rule == "conv" and n.inputs[0] is inp and n.params["groups"] == 1 \
                and n.width > 0:
            n.rule = "delta"

    plan = IsmPlan(True, "", L)
    plan._graph = g
    plan.reach = _reach(g, out_set, L)
    _costs(g, plan)
    if not any(n.kind == _LOCAL and n.width > 0 and n is not inp for n in g.nodes) and \
            not any(n.glinear for n in g.nodes):
        plan.supported = False
        plan.reason = "no operation of the model is local along the sequence (nothing to save)"
        unknown = sorted({str(n.target) for n in g.nodes if n.note.startswith("no locality rule for ")
                          and any(i.kind == _LOCAL for i in n.inputs)})
        if unknown:
            plan.reason += "; no locality rule for " + ", ".join(unknown[:5])
    return plan


def _reach(g: _Graph, out_set: set, L: int) -> np.ndarray:
    """(L,) bool: whether a substitution at p can change the output at all.

    It can when the changed hull of a local tensor read by a global operation, or of a local
    output, is non-empty. Elsewhere (positions cropped away, skipped by a stride or a pool
    window) the mutant's prediction is the reference's, exactly: the predictor returns that
    instead of recomputing windows that would only add rounding noise."""
    reach = np.zeros(L, dtype=bool)
    for n in g.nodes:
        srcs = [n] if (n.kind == _LOCAL and n in out_set) else (
            [i for i in n.inputs if i.kind == _LOCAL] if n.kind == _GLOBAL else [])
        for i in srcs:
            reach |= i.hi > i.lo
    return reach

