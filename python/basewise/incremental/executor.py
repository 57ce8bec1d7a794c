"""The executor: :class:`IncrementalPredictor` runs a plan on windows.

Per batch of mutants every node of the plan runs in one of these modes: ``win`` (local, on its
window: the step of its window rule, :attr:`IncrementalPredictor._STEPS`), ``full`` (global, at
full length on inputs spliced into the cached reference activations, or linear-global on the
window's change), ``ref`` (never changed: the cached reference activation), ``skip``, ``const``
or ``sym``. A local op reads each input at the window it needs (an :class:`_Assembly`): directly
when the input's window is that window, else by gathering the cached reference window and
overwriting the input's changed columns (``basewise.ops.gather_windows`` / ``splice_windows``,
C++/CUDA; the plain PyTorch helpers below for other dtypes).

The batch path (:meth:`IncrementalPredictor.predict`) never waits for the device: its index
bookkeeping is numpy on the host for a CPU predictor, and device-side paths without
data-dependent branches or shapes on a GPU (tests/test_incremental_sync.py checks both on a CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

try:  # native window ops (C++/CUDA); plain PyTorch fallbacks below serve as references
    from .. import ops as _ops
except Exception:  # pragma: no cover - the native module is part of the package build
    _ops = None

from .capture import _CONST, _LOCAL, _SYM, _flatten_outputs, _Node
from .plan import IsmPlan
from .rules import WINDOW_RULES, _local_inputs

aten = torch.ops.aten

# in-place variants of pointwise ops, for window buffers no other op reads
_NOOP_WINDOW = {aten.alias.default, aten.detach.default, aten.dropout.default}
_INPLACE_UNARY = {aten.relu.default: torch.relu_, aten.sigmoid.default: torch.sigmoid_,
                  aten.tanh.default: torch.tanh_, aten.exp.default: torch.exp_}
_INPLACE_BINARY = {aten.add.Tensor: torch.Tensor.add_, aten.mul.Tensor: torch.Tensor.mul_,
                   aten.sub.Tensor: torch.Tensor.sub_}
_COMMUTATIVE = {aten.add.Tensor, aten.mul.Tensor}
_IDENTITY = {aten.alias.default, aten.clone.default, aten.contiguous.default, aten.detach.default,
             aten.lift_fresh_copy.default}

# predictor attributes that depend only on (plan, device, dtype): shared by predictors (tensors
# derived from the weights are built by each predictor: IncrementalPredictor._derive_weights)
_STATIC_STATE = ("_mode", "_x", "_asm", "_off", "_out_nodes", "_exclusive", "_need_ref",
                 "_bytes_per_mutant", "_ref_bytes_per_seq", "_last_use", "_reach_dev")

#: Working-set budget (bytes) and cap of the default ``max_batch`` (mutants computed at once), by
#: device type: a CPU wants a batch's windows to stay near its caches; a GPU wants large batches
#: (and has the memory): 1 GiB of window activations, up to 16384 mutants.
_BATCH_BUDGET = {"cpu": (128 << 20, 4096), "cuda": (1 << 30, 16384)}

#: Without host positions (GPU), a dense layer on a window's change gathers each mutant's
#: weight window; at most this many bytes of gathered weights at once.
_FC_GATHER_BYTES = 64 << 20


# --------------------------------------------------------------------------------------------
# window helpers (plain PyTorch; the native ops in basewise.ops are used where available)
# --------------------------------------------------------------------------------------------


def _canon(v: torch.Tensor, ldim: int) -> torch.Tensor:
    """(M, ..., W, ...) with the length axis at ldim -> (M, C', W)."""
    if ldim != v.ndim - 1:
        v = v.movedim(ldim, -1)
    return v.reshape(v.shape[0], -1, v.shape[-1])


def _uncanon(v3: torch.Tensor, shape: Tuple[int, ...], ldim: int) -> torch.Tensor:
    """Inverse of :func:`_canon` for a node of full shape ``shape`` (window width from v3)."""
    m, w = v3.shape[0], v3.shape[-1]
    if ldim == len(shape) - 1:
        return v3.reshape((m,) + tuple(shape[1:-1]) + (w,))
    moved = [s for j, s in enumerate(shape) if j != ldim and j != 0]
    return v3.reshape([m] + moved + [w]).movedim(-1, ldim)


def _gather_ref(rp: torch.Tensor, rows: torch.Tensor, q: torch.Tensor, width: int,
                q0: Optional[int]) -> torch.Tensor:
    """Windows [q, q + width) of padded reference rows: (nb, C, Lp) -> (M, C, width)."""
    if q0 is not None:
        return rp[:, :, q0:q0 + width].index_select(0, rows)
    return rp.unfold(2, width, 1)[rows, :, q]


def _overlay(base: torch.Tensor, win: torch.Tensor, r: torch.Tensor, r0: Optional[int],
             fits: bool) -> torch.Tensor:
    """Write win (M, C, Ww) into base (M, C, Wb) at per-row offsets r (clipped to base)."""
    m, c, ww = win.shape
    wb = base.shape[-1]
    if r0 is not None and fits:
        base[:, :, r0:r0 + ww] = win
        return base
    if fits:
        idx = (r[:, None] + torch.arange(ww, device=r.device))[:, None, :].expand(m, c, ww)
        return base.scatter_(2, idx, win)
    src = torch.arange(wb, device=r.device)[None, :] - r[:, None]  # (M, Wb)
    valid = (src >= 0) & (src < ww)
    idx = src.clamp(0, ww - 1)[:, None, :].expand(m, c, wb)
    vals = torch.gather(win, 2, idx)
    return torch.where(valid[:, None, :], vals, base)


@dataclasses.dataclass
class _Assembly:
    """How a consumer reads one local input at [q, q + width) along the input's length axis."""

    src: _Node
    q_tab: torch.Tensor  # (L,) int64 on device
    width: int
    pad: Optional[float]
    q0: Optional[int]  # constant q, if any
    mlo: int
    mhi: int
    direct: bool  # the input window is exactly the requested one
    r0: Optional[int]  # constant relative offset of the input window
    fits_all: bool  # input window inside the requested one for every p
    fits_np: Optional[np.ndarray]  # (L,) bool per p: the input window inside the requested one
    q_np: Optional[np.ndarray] = None  # (L,) q per p, on the host
    direct_np: Optional[np.ndarray] = None  # (L,) bool per p: the input window is the requested one
    host: Optional[Tuple[str, str]] = None  # reuse a wider assembly of the same source ...
    rel: int = 0  # ... at this constant offset
    users: int = 1  # number of consumers reading this (host) assembly per batch


class IncrementalPredictor:
    """Predict single-substitution mutants incrementally from an :class:`IsmPlan`.

    Same interface as the engine's full-recompute predictor: :meth:`reference` and
    :meth:`predict`. The model's parameters are read live (not copied), so the model must stay
    in evaluation mode, on the plan's device, and unchanged while the predictor is used.

    Args:
        plan: a supported :class:`IsmPlan` from :func:`plan_ism`.
        ref_idx: (B, L) integer tensor of base indices (0-3, 4 = N) on the plan's device.
        max_batch: largest number of mutants computed at once (larger inputs are split).
            Default None: chosen from a working-set budget by device type
            (:data:`_BATCH_BUDGET`: 128 MiB and at most 4096 mutants on a CPU, 1 GiB and at most
            16384 on a GPU).
        cache_bytes: budget for cached reference activations; sequences are cached in blocks
            that fit. Default 256 MiB.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 7, padding=3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten()).eval()
        >>> plan = plan_ism(net, 100)
        >>> ref = torch.randint(0, 4, (2, 100))
        >>> pred = IncrementalPredictor(plan, ref)
        >>> pred.reference().shape, pred.predict(torch.tensor([[1, 5, 0]])).shape
        (torch.Size([2, 8, 1]), torch.Size([1, 8, 1]))
    """

    def __init__(self, plan: IsmPlan, ref_idx: torch.Tensor, *, max_batch: Optional[int] = None,
                 cache_bytes: int = 256 << 20) -> None:
        if not isinstance(plan, IsmPlan):
            raise TypeError(f"plan: expected an IsmPlan, got {type(plan).__name__}")
        if not plan.supported or plan._graph is None:
            raise ValueError(f"plan: the plan is not supported ({plan.reason})")
        if not isinstance(ref_idx, torch.Tensor) or ref_idx.ndim != 2:
            raise ValueError("ref_idx: expected a (B, L) integer tensor of base indices")
        if ref_idx.shape[1] != plan.length:
            raise ValueError(f"ref_idx: expected length {plan.length} (the plan's), got {ref_idx.shape[1]}")
        self.plan = plan
        g = plan._graph
        self.g = g
        self.dtype = plan.dtype or torch.float32
        self.device = ref_idx.device
        self.ref_idx = ref_idx.to(torch.long)
        self.B, self.L = ref_idx.shape
        self.cache_bytes = int(cache_bytes)
        self._native = (_ops is not None and self.dtype in _ops.FLOAT_DTYPES
                        and self.device.type in ("cpu", "cuda"))
        self.ref_u8 = ref_idx.to(torch.uint8).contiguous()
        with torch.no_grad():
            self._bind()
            key = (str(self.device), self.dtype)
            state = plan._static.get(key)
            if state is None:
                self._prepare()
                state = {k: getattr(self, k) for k in _STATIC_STATE}
                plan._static.clear()  # one device version at a time
                plan._static[key] = state
            else:
                for k, v in state.items():
                    setattr(self, k, v)
            self._derive_weights()
        per_mut = max(1, self._bytes_per_mutant)
        if max_batch:
            self.max_batch = int(max_batch)
        else:
            budget, cap = _BATCH_BUDGET.get(self.device.type, _BATCH_BUDGET["cpu"])
            self.max_batch = int(max(16, min(cap, budget // per_mut)))
        reach = plan.reach if plan.reach is not None else np.ones(self.L, dtype=bool)
        self._reach_np = reach
        self._reach_all = bool(reach.all())
        self._ref_out: Optional[torch.Tensor] = None  # reference predictions, once computed
        self._row_of = torch.full((self.B,), -1, dtype=torch.long, device=self.device)
        self._row_np = np.full(self.B, -1, dtype=np.int64)  # the same, on the host
        self._cache: Dict[Any, torch.Tensor] = {}
        self._cached_seqs: Optional[torch.Tensor] = None
        # every sequence's reference activations are cached at once (one block, filled by the
        # first reference() or predict()): the batch path then never decides which to cache
        self._cache_all = self.B == 1 or self.B * self._ref_bytes_per_seq <= self.cache_bytes
        #: decide the batch path's index bookkeeping on the host (numpy) when the mutants are
        #: there (a CPU predictor); else use device-side paths that never wait for the device
        self._host_bookkeeping = self.device.type == "cpu"

    # ---------------------------------------------------------------- setup
    def _derive_weights(self) -> None:
        """Tensors derived from the weights (first-layer delta table, dense layer by position),
        built per predictor from the live weights: cheaper than a digest of them (which would
        also wait for the device), and never stale."""
        self._w: Dict[str, Dict[str, torch.Tensor]] = {}
        for n in self.g.nodes:
            m = self._mode[n]
            if m == "win" and n.rule == "delta":
                w = self._const[n.inputs[1].node]  # (Cout, 4, k)
                cout, cin, k = w.shape
                if cin != 4:
                    raise ValueError("plan: the first convolution must have 4 input channels")
                wt = torch.zeros(5, cout, k, dtype=w.dtype, device=w.device)
                wt[:4] = w.permute(1, 0, 2)
                self._w[n.name] = {"_wt": wt}
            elif m == "full" and n.glinear == "fc":
                src = _local_inputs(n.inputs[0])[0]
                w = self._const[n.inputs[1].node]  # (N, C*L)
                nout = w.shape[0]
                shp = src.shape  # (B, d1, d2)
                wv = w.reshape(nout, shp[1], shp[2])
                other = 1 if src.ldim == 2 else 2
                self._w[n.name] = {"_wp": wv.permute(src.ldim, other, 0).contiguous()}  # (Lt, C, N)

    def _bind(self) -> None:
        g = self.g
        env: Dict[Any, Any] = {}
        model = g.model_ref() if g.model_ref is not None else None
        if model is None:
            raise ValueError("plan: the model it was made for no longer exists")

        def owner(fqn: str) -> Tuple[torch.nn.Module, str]:
            head, _, rest = fqn.partition(".")
            if head == "model":
                return model, rest
            if head == "transform" and isinstance(g.transform, torch.nn.Module):
                return g.transform, rest
            raise ValueError(f"plan: cannot resolve the captured tensor {fqn!r}")
        for n in g.nodes:
            fx = n.node
            if fx.op == "placeholder" and n.kind == _CONST:
                kind, fqn = g.placeholders.get(fx.name, ("", ""))
                if kind == "PARAMETER":
                    o, rest = owner(fqn)
                    v = o.get_parameter(rest)
                elif kind == "BUFFER":
                    o, rest = owner(fqn)
                    v = o.get_buffer(rest)
                elif kind == "CONSTANT_TENSOR":
                    v = g.constants[fqn]
                    if isinstance(v, torch.Tensor):
                        v = v.to(self.device)
                else:
                    raise ValueError(f"plan: graph input {fx.name} of kind {kind} is not supported")
                env[fx] = v.detach() if isinstance(v, torch.Tensor) else v
        for n in g.nodes:
            fx = n.node
            if fx.op == "call_function" and n.kind == _CONST:
                a = torch.fx.node.map_arg(fx.args, lambda x: env[x])
                k = torch.fx.node.map_arg(fx.kwargs, lambda x: env[x])
                env[fx] = fx.target(*a, **k)
        self._const = env

    def _prepare(self) -> None:
        g = self.g
        dev = self.device
        L = self.L
        mode: Dict[_Node, str] = {}
        for n in g.nodes:
            if n.kind == _CONST:
                mode[n] = "const"
            elif n.kind == _SYM:
                mode[n] = "sym"
            elif n.kind == _LOCAL:
                mode[n] = "win" if n.width > 0 else "ref"
            else:
                dep = [mode[i] for i in n.inputs if i.kind != _CONST]
                if n.glinear == "fc":
                    src = _local_inputs(n.inputs[0])[0]
                    mode[n] = "full" if mode[src] == "win" else "ref"
                elif n.glinear == "flatten":
                    mode[n] = "skip" if mode[_local_inputs(n)[0]] == "win" else "ref"
                elif all(d == "ref" for d in dep):
                    # a node that also reads a batch-size symbol (e.g. an RNN's zero initial state
                    # of shape (layers, batch, hidden)) is recomputed for each mutant batch below:
                    # its cached reference value has the reference's batch size, and the batch
                    # axis need not come first, so rows of it cannot be selected
                    mode[n] = "ref"
                else:
                    mode[n] = "full"
        out_nodes = [g.by_fx[o] for o in _flatten_outputs(g.outputs)]
        for o in out_nodes:
            if mode[o] == "skip":  # a flatten that is also an output: compute it normally
                mode[o] = "full"
                for c in o.consumers:
                    c.glinear = ""
                    mode[c] = "full"
        self._mode = mode
        reach = self.plan.reach if self.plan.reach is not None else np.ones(L, dtype=bool)
        self._reach_dev = torch.as_tensor(reach, device=dev)
        self._x: Dict[str, Dict[str, Any]] = {}  # per-node tensors of this predictor (its device)
        need_ref: set = set()
        self._asm: Dict[Tuple[str, str], _Assembly] = {}
        self._off: Dict[str, torch.Tensor] = {}
        bytes_per = 0
        itemsize = torch.empty((), dtype=self.dtype).element_size()

        def add_asm(consumer: _Node, src: _Node, q_tab: np.ndarray, width: int, pad: Optional[float]) -> None:
            key = (consumer.name, src.name)
            q_tab = q_tab.astype(np.int64)
            mlo = int(max(0, -q_tab.min()))
            mhi = int(max(0, (q_tab + width).max() - src.length))
            q0 = int(q_tab[0]) if np.all(q_tab == q_tab[0]) else None
            direct = False
            r0 = None
            fits_all = True
            fits_np = None
            if mode[src] == "win":
                r = src.off - q_tab
                direct = bool(np.all(r == 0) and src.width == width)
                fits = (r >= 0) & (r + src.width <= width)
                fits_all = bool(fits.all())
                if np.all(r == r[0]):
                    r0 = int(r[0])
                if not fits_all:
                    fits_np = fits
                if not direct and src.width == width and np.mean(r == 0) > 0.5:
                    direct_tab_np = r == 0
                else:
                    direct_tab_np = None
            else:
                direct_tab_np = None
            if not direct:
                need_ref.add(src)
            self._asm[key] = _Assembly(src, torch.as_tensor(q_tab, device=dev), width, pad, q0, mlo, mhi,
                                       direct, r0, fits_all, fits_np, q_tab, direct_tab_np)

        for n in g.nodes:
            m = mode[n]
            if n.kind == _LOCAL and m == "win":
                self._off[n.name] = torch.as_tensor(n.off, device=dev)
                bytes_per += int(np.prod([abs(s) for s in n.shape[1:]]) // max(1, n.length)) * n.width * itemsize
            if m == "win" and n.rule == "input":
                self._x.setdefault(n.name, {})["_all_hit"] = bool(np.all(n.off == np.arange(L)))
            if m == "win" and n.rule not in ("input", "delta"):
                # the input windows the node's window rule reads (rules.WINDOW_RULES)
                reads, rel = WINDOW_RULES[n.rule].reads(n)
                if rel is not None:
                    ex = self._x.setdefault(n.name, {})
                    ex["_rel"] = torch.as_tensor(rel, device=dev)
                    ex["_rel0"] = int(rel[0]) if np.all(rel == rel[0]) else None
                for src, q, wreq, pad in reads:
                    add_asm(n, src, q, wreq, pad)
            elif m == "win" and n.rule == "delta":
                need_ref.add(n)
                self._prepare_delta(n)
            elif m in ("full", "ref", "skip") and n.kind != _LOCAL:
                if m == "full":
                    bytes_per += int(np.prod([abs(s) for s in n.shape[1:]])) * itemsize if n.shape else 0
                if n.glinear in ("reduce",) and m == "full":
                    need_ref.add(n)
                    src = _local_inputs(n)[0]
                    add_asm(n, src, src.off, src.width, None)
                    need_ref.add(src)
                elif n.glinear == "fc" and m == "full":
                    need_ref.add(n)
                    src = _local_inputs(n.inputs[0])[0]
                    add_asm(n, src, src.off, src.width, None)
                    need_ref.add(src)
                elif m == "full":
                    for i in n.inputs:
                        if i.kind == _LOCAL:
                            if mode[i] == "ref":
                                need_ref.add(i)
                            elif not (i.width == i.length and i.dlo == 0):
                                add_asm(n, i, np.zeros(L, dtype=np.int64), i.length, None)
                        elif mode[i] == "ref":
                            need_ref.add(i)
            # consumers of unchanged local tensors
            if m == "win":
                for i in n.inputs:
                    if i.kind == _LOCAL and mode[i] == "ref":
                        need_ref.add(i)
        for o in out_nodes:
            if mode[o] == "ref":
                need_ref.add(o)
            elif mode[o] == "win" and not (o.width == o.length):
                add_asm(_Node(node=None, name="<output>", target=None), o, np.zeros(L, dtype=np.int64),
                        o.length, None)
        self._out_nodes = out_nodes
        # an assembly contained in a wider one of the same source at a constant offset reuses it
        asms = [(k, a) for k, a in self._asm.items() if not a.direct]
        for k, a in asms:
            best = None
            for k2, h in asms:
                if k2 == k or h.src is not a.src or h.width < a.width or h.host is not None:
                    continue
                if a.pad is not None and a.pad != h.pad:
                    continue
                rel = a.q_np - h.q_np
                if np.all(rel == rel[0]) and rel[0] >= 0 and rel[0] + a.width <= h.width:
                    if best is None or h.width > best[1].width:
                        best = (k2, h, int(rel[0]))
            if best is not None and (best[1].host is None):
                a.host, a.rel = best[0], best[2]
                best[1].users += 1
        # windows whose buffer the single consumer may overwrite (in-place pointwise ops)
        fresh: Dict[_Node, bool] = {}
        for n in g.nodes:
            if mode[n] != "win":
                continue
            how = WINDOW_RULES[n.rule].fresh
            if how == "assembly":
                a = self._asm.get((n.name, _local_inputs(n)[0].name))
                fresh[n] = a is not None and not a.direct and a.host is None and a.users == 1
            elif how == "inherit" or n.target in _IDENTITY or n.target in (aten.dropout.default,
                                                                         aten.feature_dropout.default):
                i = _local_inputs(n)[0]
                fresh[n] = fresh.get(i, False) and len(i.consumers) == 1
            else:
                fresh[n] = True
        outs_set = set(out_nodes)
        self._exclusive = {n for n, f in fresh.items()
                           if f and len(n.consumers) == 1 and n not in outs_set}
        self._need_ref = need_ref
        self._bytes_per_mutant = bytes_per
        # reference bytes per sequence (for the cache block size)
        rb = 0
        for n in need_ref:
            rb += int(np.prod([abs(s) for s in n.shape[1:]])) * itemsize if n.shape else 0
        self._ref_bytes_per_seq = max(1, rb)
        # last use of every dep node in the reference pass (to free memory)
        order = {n: j for j, n in enumerate(g.nodes)}
        last: Dict[_Node, int] = {}
        for n in g.nodes:
            for i in n.inputs:
                last[i] = order[n]
        for o in out_nodes:
            last[o] = len(g.nodes)
        self._last_use = last

    def _prepare_delta(self, n: _Node) -> None:
        p = n.params
        k = p["k"]
        L = self.L
        P = np.arange(L, dtype=np.int64)[:, None]
        t = np.arange(k, dtype=np.int64)[None, :]
        o_t = P + p["pl"] - t * p["d"]
        valid = (o_t % p["s"]) == 0
        o = o_t // p["s"]
        rel = o - n.off[:, None]
        valid &= (rel >= 0) & (rel < n.width)
        idx = np.where(valid, rel, n.width)
        self._x.setdefault(n.name, {})["_idx"] = torch.as_tensor(idx, device=self.device)

    # ---------------------------------------------------------------- reference activations
    def _run_graph(self, x: torch.Tensor, keep: Optional[set] = None) -> Dict[Any, Any]:
        g = self.g
        env: Dict[Any, Any] = dict(self._const)
        env[g.input.node] = x
        keep = keep or set()
        for j, n in enumerate(g.nodes):
            fx = n.node
            if n.kind == _CONST or fx.op == "placeholder":
                continue
            a = torch.fx.node.map_arg(fx.args, lambda v: env[v])
            k = torch.fx.node.map_arg(fx.kwargs, lambda v: env[v])
            env[fx] = fx.target(*a, **k)
            for i in n.inputs:
                if i.kind != _CONST and self._last_use.get(i, -1) <= j and i not in keep:
                    env.pop(i.node, None)
        return env

    def _onehot(self, idx: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(idx.shape[0], 5, idx.shape[1], dtype=self.dtype, device=self.device)
        x.scatter_(1, idx.long()[:, None, :], 1.0)
        return x[:, :4]

    def _outputs(self, env: Dict[Any, Any]) -> torch.Tensor:
        from .._model import _as_3d

        return _as_3d(env[self.g.outputs] if isinstance(self.g.outputs, torch.fx.Node) else self.g.outputs)

    def reference(self) -> torch.Tensor:
        """Predictions for the reference sequences, (B, T, L_out).

        When all B sequences fit the cache budget, the activations the mutants need are kept
        from this pass, so the first :meth:`predict` does not run the reference again.
        """
        if self._ref_out is None:
            outs = []
            with torch.no_grad():
                if self.B * self._ref_bytes_per_seq <= self.cache_bytes:
                    env = self._fill_cache(np.arange(self.B), keep_outputs=True)
                    outs.append(self._outputs(env))
                else:
                    chunk = max(1, min(self.B, (256 << 20) // max(1, self._ref_bytes_per_seq * 4)))
                    for s in range(0, self.B, chunk):
                        env = self._run_graph(self._onehot(self.ref_idx[s:s + chunk]))
                        outs.append(self._outputs(env))
            self._ref_out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self._ref_out

    def reaches(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether substitutions at ``positions`` can change the output at all (bool, same shape).

        Where not (positions the model never reads), :meth:`predict` returns the reference
        prediction exactly."""
        return self._reach_dev[positions.to(device=self.device, dtype=torch.long)]

    def _ensure_cache(self, seqs: torch.Tensor, host_seqs: Optional[np.ndarray] = None) -> None:
        """Cache the reference activations of the sequences ``seqs`` (a batch's; ``host_seqs``:
        the same on the host, or None)."""
        if self._cache_all:  # one block of every sequence: nothing to decide per batch
            if self._cached_seqs is None:
                self._fill_cache(np.arange(self.B))
            return
        # more sequences than the cache holds: cache a block that holds the batch's, decided on
        # the host (without a host copy, reading the batch's sequences back waits for the device)
        need = np.unique(host_seqs) if host_seqs is not None else torch.unique(seqs).cpu().numpy()
        if self._cached_seqs is not None and bool((self._row_np[need] >= 0).all()):
            return
        per_block = max(int(need.size), self.cache_bytes // self._ref_bytes_per_seq)
        start = int(need.max())
        extra = np.arange(start + 1, min(self.B, start + 1 + max(0, per_block - need.size)))
        self._fill_cache(np.unique(np.concatenate([need, extra])))

    def _fill_cache(self, block_np: np.ndarray, keep_outputs: bool = False) -> Dict[Any, Any]:
        """Run the reference sequences ``block_np`` (sorted, unique) and cache the activations the
        mutants read."""
        block = (torch.arange(self.B, device=self.device) if block_np.size == self.B
                 else torch.as_tensor(block_np, dtype=torch.long, device=self.device))
        self._cache = {}
        self._row_of.fill_(-1)
        self._row_of[block] = torch.arange(block.numel(), device=self.device)
        self._row_np.fill(-1)
        self._row_np[block_np] = np.arange(block_np.size)
        self._cached_seqs = block
        keep = set(self._need_ref)
        env = self._run_graph(self._onehot(self.ref_idx[block]), keep)
        for n in self._need_ref:
            v = env[n.node]
            if n.kind == _LOCAL:
                self._cache[("R", n.name)] = _canon(v, n.ldim).contiguous()
            else:
                self._cache[("R", n.name)] = v
        return env

    def _ref3(self, n: _Node) -> torch.Tensor:
        return self._cache[("R", n.name)]

    def _ref_padded(self, a: _Assembly) -> torch.Tensor:
        key = ("P", a.src.name, a.pad, a.mlo, a.mhi)
        rp = self._cache.get(key)
        if rp is None:
            r = self._ref3(a.src)
            if a.mlo or a.mhi:
                rp = F.pad(r, (a.mlo, a.mhi), value=a.pad if a.pad is not None else 0.0)
            else:
                rp = r
            self._cache[key] = rp
        return rp

    # ---------------------------------------------------------------- windowed execution
    def _assemble(self, consumer: str, src: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        """The consumer's view of src: (M, ..., width, ...) in src's layout."""
        a = self._asm[(consumer, src.name)]
        v = env.get(src.node)
        if a.direct:
            return v
        if a.direct_np is not None and ctx["host"] is not None and bool(a.direct_np[ctx["host"][:, 1]].all()):
            return v  # (without host positions: assembled below, to the same values)
        if a.host is not None:
            h = self._asm[a.host]
            buf = self._assembled(a.host, h, src, v, ctx)
            return _uncanon(buf[:, :, a.rel:a.rel + a.width], src.shape, src.ldim)
        if a.users > 1:
            buf = self._assembled((consumer, src.name), a, src, v, ctx)
            return _uncanon(buf, src.shape, src.ldim)
        return _uncanon(self._assemble3(a, src, v, ctx), src.shape, src.ldim)

    def _assembled(self, key: Tuple[str, str], a: _Assembly, src: _Node, v: Any,
                   ctx: Dict[str, Any]) -> torch.Tensor:
        """A host assembly (canonical 3-D), computed once per batch and shared by its users."""
        cache = ctx.setdefault("asm", {})
        ent = cache.get(key)
        if ent is None:
            ent = [self._assemble3(a, src, v, ctx), a.users]
            cache[key] = ent
        ent[1] -= 1
        buf = ent[0]
        if ent[1] <= 0:
            del cache[key]
        return buf

    def _gather(self, a: _Assembly, ctx: Dict[str, Any]) -> torch.Tensor:
        """Reference windows [q, q + width) of a.src (pad value outside), (M, C, width)."""
        pos = ctx["pos"]
        if self._native and (a.pad is None or a.pad == 0.0):
            q = a.q_tab[pos] if a.q0 is None else ctx.setdefault(("q0", a.q0), torch.full_like(pos, a.q0))
            return _ops.gather_windows(self._ref3(a.src), ctx["rows"], q, a.width, check=False)
        q = None if a.q0 is not None else a.q_tab[pos] + a.mlo
        return _gather_ref(self._ref_padded(a), ctx["rows"], q, a.width,
                           None if a.q0 is None else a.q0 + a.mlo)

    def _assemble3(self, a: _Assembly, src: _Node, v: Any, ctx: Dict[str, Any]) -> torch.Tensor:
        pos, host = ctx["pos"], ctx["host"]
        if self._mode[src] != "win":
            return self._gather(a, ctx)
        win = _canon(v, src.ldim)
        r = None
        if a.r0 is None or not a.fits_all:
            r = self._off[src.name][pos] - a.q_tab[pos]
        if a.fits_all:
            fits = True
        else:  # without host positions: the general (clipping) overlay, right for every row
            fits = host is not None and bool(a.fits_np[host[:, 1]].all())
        if self._native and a.q0 == 0 and a.width == src.length:  # splice into the reference
            return _ops.splice_windows(self._ref3(src), ctx["rows"], self._off[src.name][pos],
                                       win.contiguous(), check=False)
        base = self._gather(a, ctx)
        r0 = a.r0
        if r0 is None and fits and host is not None:  # one offset for the whole batch?
            rh = src.off[host[:, 1]] - a.q_np[host[:, 1]]
            if (rh == rh[0]).all():
                r0 = int(rh[0])
        if not fits and self._native:
            return _ops.splice_windows(base, torch.arange(base.shape[0], device=base.device), r,
                                       win.contiguous(), check=False)
        return _overlay(base, win, r, r0, fits)

    def _full_of(self, i: _Node, env: Dict[Any, Any], ctx: Dict[str, Any], consumer: str) -> Any:
        m = self._mode[i]
        if m in ("const",):
            return self._const[i.node]
        if m in ("full", "sym"):
            return env[i.node]
        if m == "ref":
            r = self._ref3(i)
            if i.kind == _LOCAL:
                return _uncanon(r.index_select(0, ctx["rows"]), i.shape, i.ldim)
            return r.index_select(0, ctx["rows"])
        # window of a local tensor
        if i.width == i.length and (consumer, i.name) not in self._asm:
            return env[i.node]
        return self._assemble(consumer, i, env, ctx)

    def _run_window(self, mut: torch.Tensor, host: Optional[np.ndarray] = None) -> torch.Tensor:
        """Predictions of one batch of mutants (M, 3); ``host``: the same on the host, or None."""
        g = self.g
        seq, pos, base = mut[:, 0], mut[:, 1], mut[:, 2]
        rows = self._row_of[seq]
        M = mut.shape[0]
        ctx = {"rows": rows, "pos": pos, "base": base, "seq": seq, "M": M, "host": host}
        env: Dict[Any, Any] = {}
        mode = self._mode
        for j, n in enumerate(g.nodes):
            m = mode[n]
            if m in ("const", "ref", "skip"):
                continue
            fx = n.node
            if m == "sym":
                a = torch.fx.node.map_arg(fx.args, lambda v: self._sym_arg(v, env))
                k = torch.fx.node.map_arg(fx.kwargs, lambda v: self._sym_arg(v, env))
                env[fx] = fx.target(*a, **k)
                continue
            if m == "win":
                env[fx] = self._local_step(n, env, ctx)
            else:
                env[fx] = self._global_step(n, env, ctx)
            for i in n.inputs:
                if i.kind != _CONST and self._last_use.get(i, -1) <= j:
                    env.pop(i.node, None)
        outs = []
        for o in self._out_nodes:
            outs.append(self._full_of(o, env, ctx, "<output>"))
        from .._model import _as_3d

        return _as_3d(outs[0])

    def _sym_arg(self, v: Any, env: Dict[Any, Any]) -> Any:
        n = self.g.by_fx[v]
        if n.kind == _CONST:
            return self._const[v]
        return env[v]

    def _local_step(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        """n's window for this batch: the step of its window rule."""
        return self._STEPS[n.rule](self, n, env, ctx)

    # ---------------------------------------------------------------- window steps, one per rule
    def _step_input(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        # the window is the column at off[p]; where a substitution at p is not read by the
        # model (cropped away, skipped by a stride), off[p] != p and the column holds the
        # reference base there, so the mutant's prediction is exactly the reference's
        pos = ctx["pos"]
        b = ctx["base"]
        if not self._x[n.name]["_all_hit"]:
            off = self._off[n.name][pos]
            b = torch.where(off == pos, b, self.ref_idx[ctx["seq"], off])
        oh = torch.zeros(ctx["M"], 5, 1, dtype=self.dtype, device=self.device)
        oh.scatter_(1, b[:, None, None], 1.0)
        return oh[:, :4]

    def _step_delta(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        # the first convolution: the cached pre-activation plus weight[:, new] - weight[:, old]
        p = n.params
        pos = ctx["pos"]
        w = n.width
        rows = ctx["rows"]
        a_off = self._off[n.name][pos]
        if self._native:
            pre = _ops.gather_windows(self._ref3(n), rows, a_off, w, check=False)
            mut = torch.stack([ctx["seq"], pos, ctx["base"]], 1)
            _ops.conv_delta_(pre, self._const[n.inputs[1].node], mut, self.ref_u8, a_off,
                             p["s"], p["pl"], p["d"], check=False)
            return pre
        ex = self._x[n.name]
        r = self._ref3(n)
        key = ("P", n.name, 0.0, 0, 1)
        rp = self._cache.get(key)
        if rp is None:
            rp = F.pad(r, (0, 1))
            self._cache[key] = rp
        q0 = int(n.off[0]) if n.width == n.length else None
        pre = _gather_ref(rp, rows, a_off, w + 1, q0)
        old = self.ref_idx[ctx["seq"], pos]
        wt = self._w[n.name]["_wt"]
        vals = wt[ctx["base"]] - wt[old]  # (M, Cout, k)
        idx = ex["_idx"][pos]  # (M, k)
        pre.scatter_add_(2, idx[:, None, :].expand(-1, pre.shape[1], -1), vals)
        return pre[:, :, :w]

    def _step_conv(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        p = n.params
        x = self._assemble(n.name, n.inputs[0], env, ctx)
        wt = self._const[n.inputs[1].node]
        bias = self._const[n.inputs[2].node] if len(n.inputs) > 2 and n.inputs[2].kind == _CONST else None
        return F.conv1d(x, wt, bias, p["s"], 0, p["d"], p["groups"])

    def _step_tconv(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        p = n.params
        ex = self._x[n.name]
        x = self._assemble(n.name, n.inputs[0], env, ctx)
        wt = self._const[n.inputs[1].node]
        bias = self._const[n.inputs[2].node] if len(n.inputs) > 2 and n.inputs[2].kind == _CONST else None
        y = F.conv_transpose1d(x, wt, bias, p["s"], 0, 0, p["groups"], p["d"])
        if ex["_rel0"] is not None:
            return y[:, :, ex["_rel0"]:ex["_rel0"] + n.width]
        rel = ex["_rel"][ctx["pos"]]
        if self._native:
            return _ops.gather_windows(y.contiguous(), torch.arange(y.shape[0], device=y.device), rel,
                                       n.width, check=False)
        idx = (rel[:, None] + torch.arange(n.width, device=y.device))[:, None, :]
        return torch.gather(y, 2, idx.expand(-1, y.shape[1], -1))

    def _step_pool(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        p = n.params
        x = self._assemble(n.name, n.inputs[0], env, ctx)
        if p["kind"] == "max":
            return F.max_pool1d(x, p["k"], p["s"], 0, p["d"])
        return F.avg_pool1d(x, p["k"], p["s"], 0)

    def _step_pad(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        # along the length the pad (or crop) is in the assembly's offsets and pad value
        p = n.params
        x = self._assemble(n.name, _local_inputs(n)[0], env, ctx)
        if p.get("other"):
            x = F.pad(x, p["other"], value=p["value"])
        return x

    def _step_flip(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        return self._assemble(n.name, _local_inputs(n)[0], env, ctx).flip(n.params["dims"])

    def _step_split(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        x = self._assemble(n.name, n.inputs[0], env, ctx)  # (M, .., width * p, ..)
        shape = list(n.shape)
        shape[0], shape[n.ldim] = ctx["M"], n.width
        return x.reshape(shape)  # (M, .., width, p, ..)

    def _step_merge(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        ex = self._x[n.name]
        x = self._assemble(n.name, n.inputs[0], env, ctx)  # (M, .., wi, p, ..)
        src = n.inputs[0]
        shape = list(n.shape)
        shape[0], shape[n.ldim] = ctx["M"], x.shape[src.ldim] * n.params["p"]
        y = x.reshape(shape)  # (M, .., wi * p, ..)
        if ex["_rel0"] is not None:
            return y.narrow(n.ldim, ex["_rel0"], n.width)
        y3 = _canon(y, n.ldim)
        idx = (ex["_rel"][ctx["pos"]][:, None] + torch.arange(n.width, device=y.device))[:, None, :]
        return _uncanon(torch.gather(y3, 2, idx.expand(-1, y3.shape[1], -1)), n.shape, n.ldim)

    def _window_args(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> Tuple[Any, Any, set]:
        """n's arguments with every local input at n's window: (args, kwargs, the fx inputs whose
        buffers n may overwrite)."""
        fx = n.node
        vals: Dict[Any, Any] = {}
        owned = set()
        for i in n.inputs:
            if i.kind == _CONST:
                vals[i.node] = self._const[i.node]
            elif i.kind == _SYM:
                vals[i.node] = env[i.node]
            elif self._mode[i] == "ref" or ((n.name, i.name) in self._asm and not self._asm[(n.name, i.name)].direct):
                vals[i.node] = self._assemble(n.name, i, env, ctx)
            else:
                vals[i.node] = env[i.node]
                if i in self._exclusive:
                    owned.add(i.node)
        a = torch.fx.node.map_arg(fx.args, lambda v: vals[v])
        k = torch.fx.node.map_arg(fx.kwargs, lambda v: vals[v])
        return a, k, owned

    def _step_view(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        a, _, _ = self._window_args(n, env, ctx)
        shape = list(n.shape)
        shape[0] = ctx["M"]
        shape[n.ldim] = n.width
        return a[0].reshape(shape)

    def _step_pointwise(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> torch.Tensor:
        # call the op itself on the windows (in place where its input buffer is n's alone)
        a, k, owned = self._window_args(n, env, ctx)
        t = n.target
        if t in _NOOP_WINDOW and not k:
            if t is not aten.dropout.default or not a[2]:
                return a[0]
        if owned:
            r = self._inplace(t, n.node.args, a, k, owned)
            if r is not None:
                return r
        return t(*a, **k)

    #: window rule name (rules.WINDOW_RULES) -> how a node of that rule runs on its window
    _STEPS: Dict[str, Callable[["IncrementalPredictor", _Node, Dict[Any, Any], Dict[str, Any]], torch.Tensor]] = {
        "input": _step_input, "delta": _step_delta, "conv": _step_conv, "tconv": _step_tconv,
        "pool": _step_pool, "pad": _step_pad, "flip": _step_flip, "split": _step_split,
        "merge": _step_merge, "view": _step_view, "pointwise": _step_pointwise,
    }

    @staticmethod
    def _inplace(t: Any, fargs: Tuple, a: Tuple, k: Dict[str, Any], owned: set) -> Optional[torch.Tensor]:
        """Run a pointwise op in place on an input buffer nobody else reads, if the op allows."""
        unary = _INPLACE_UNARY.get(t)
        if unary is not None:
            if fargs and fargs[0] in owned and not k and len(a) == 1:
                return unary(a[0])
            return None
        binary = _INPLACE_BINARY.get(t)
        if binary is None or len(a) != 2 or any(kk != "alpha" for kk in k):
            return None
        x, y = a
        cand = []
        if fargs[0] in owned:
            cand.append((x, y))
        if isinstance(fargs[1], torch.fx.Node) and fargs[1] in owned and t in _COMMUTATIVE and not k:
            cand.append((y, x))
        for dst, other in cand:
            if not isinstance(dst, torch.Tensor):
                continue
            if isinstance(other, torch.Tensor):
                if torch.broadcast_shapes(dst.shape, other.shape) != dst.shape or \
                        torch.result_type(dst, other) != dst.dtype:
                    continue
            return binary(dst, other, **k)
        return None

    def _global_step(self, n: _Node, env: Dict[Any, Any], ctx: Dict[str, Any]) -> Any:
        fx = n.node
        if n.glinear == "reduce":
            src = _local_inputs(n)[0]
            win = env[src.node]
            a = self._asm[(n.name, src.name)]
            refw = self._gather(a, ctx)
            delta = win - _uncanon(refw, src.shape, src.ldim)
            p = n.params
            d = delta.sum(dim=p["dims"], keepdim=p["keepdim"])
            return self._ref3(n).index_select(0, ctx["rows"]) + d * p["scale"]
        if n.glinear == "fc":
            src = _local_inputs(n.inputs[0])[0]
            win = env[src.node]
            a = self._asm[(n.name, src.name)]
            pos = ctx["pos"]
            refw = self._gather(a, ctx)
            delta = _canon(win, src.ldim) - refw  # (M, C, W)
            wp = self._w[n.name]["_wp"]  # (Lt, C, N)
            M, C, W = delta.shape
            dl = delta.transpose(1, 2).reshape(M, W * C)
            out = self._ref3(n).index_select(0, ctx["rows"]).clone()
            if a.q0 is not None:
                o = a.q0
                out += dl @ wp[o:o + W].reshape(W * C, -1)
                return out
            host = ctx["host"]
            if host is None:  # each mutant's weight window, gathered on the device
                return self._fc_rows(out, dl, wp, self._off[src.name][pos], W, C)
            # grouped by window offset, on the host
            uniq, inv = np.unique(src.off[host[:, 1]], return_inverse=True)
            if uniq.size == 1:
                o = int(uniq[0])
                out += dl @ wp[o:o + W].reshape(W * C, -1)
                return out
            order = torch.as_tensor(np.argsort(inv, kind="stable"), device=dl.device)
            counts = np.bincount(inv, minlength=uniq.size).tolist()
            dls = dl.index_select(0, order)
            res = torch.empty_like(out)
            s = 0
            for o, c in zip(uniq.tolist(), counts):
                res[s:s + c] = dls[s:s + c] @ wp[o:o + W].reshape(W * C, -1)
                s += c
            out.index_add_(0, order, res)
            return out
        vals: Dict[Any, Any] = {}
        for i in n.inputs:
            vals[i.node] = self._full_of(i, env, ctx, n.name)
        a = torch.fx.node.map_arg(fx.args, lambda v: vals[v])
        k = torch.fx.node.map_arg(fx.kwargs, lambda v: vals[v])
        if fx.target is aten.linear.default and a[0].dim() > 2 and not a[0].is_contiguous():
            # a dense layer on a transposed activation (attention's in-projection on the
            # sequence-first layout) would otherwise run as a batched matmul with an expanded,
            # copied weight; one contiguous copy turns it into a single GEMM
            a = (a[0].contiguous(),) + tuple(a[1:])
        return fx.target(*a, **k)

    @staticmethod
    def _fc_rows(out: torch.Tensor, dl: torch.Tensor, wp: torch.Tensor, offs: torch.Tensor, W: int,
                 C: int) -> torch.Tensor:
        """out += each row of dl (M, W C) times its weight window wp[off:off + W] (Lt, C, N):
        gathered per row (in chunks of at most :data:`_FC_GATHER_BYTES`), no host decision."""
        idx = offs[:, None] + torch.arange(W, device=offs.device)  # (M, W)
        n_out = wp.shape[-1]
        step = max(1, _FC_GATHER_BYTES // max(1, W * C * n_out * wp.element_size()))
        for s in range(0, dl.shape[0], step):
            wr = wp[idx[s:s + step]].reshape(-1, W * C, n_out)  # (m, W C, N)
            out[s:s + step] += torch.bmm(dl[s:s + step, None, :], wr)[:, 0]
        return out

    def predict(self, mutants: torch.Tensor) -> torch.Tensor:
        """Predictions for mutants given as (M, 3) rows of (sequence, position, base).

        Nothing in here waits for the device (no ``.item()``, ``nonzero``, ``unique`` or
        ``bool()`` of a device tensor), except when the predictor holds more sequences than its
        cache (``cache_bytes``) and a batch needs another block of them. On the CPU the index
        bookkeeping (which mutants the output can see, the window shortcuts a batch allows, the
        dense layer's groups of window offsets) is decided in numpy on the mutants themselves;
        on a GPU the batch takes device-side paths with the same results: mutants the output
        cannot see are computed too and replaced by the reference prediction, windows are always
        assembled, and the dense layer on a window's change gathers each mutant's weight window.

        Returns:
            (M, T, L_out) tensor in the model dtype.
        """
        if not isinstance(mutants, torch.Tensor) or mutants.ndim != 2 or mutants.shape[1] != 3:
            raise ValueError("mutants: expected an (M, 3) integer tensor of (sequence, position, base)")
        mutants = mutants.to(device=self.device, dtype=torch.long)
        host = mutants.numpy() if self._host_bookkeeping and mutants.device.type == "cpu" else None
        hit = None  # device path: which mutants the output can see
        if not self._reach_all and mutants.shape[0]:
            if host is None:
                hit = self._reach_dev[mutants[:, 1]]
            elif not self._reach_np[host[:, 1]].all():
                out = self.reference().index_select(0, mutants[:, 0]).clone()
                sel = np.nonzero(self._reach_np[host[:, 1]])[0]
                if sel.size:
                    sel_t = torch.from_numpy(sel)
                    out[sel_t] = self.predict(mutants[sel_t])
                return out
        outs = []
        with torch.no_grad():
            for s in range(0, mutants.shape[0], self.max_batch):
                mb = mutants[s:s + self.max_batch]
                hb = None if host is None else host[s:s + self.max_batch]
                self._ensure_cache(mb[:, 0], None if hb is None else hb[:, 0])
                outs.append(self._run_window(mb, hb))
        if not outs:
            return torch.empty(0, dtype=self.dtype, device=self.device)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        if hit is not None:  # exactly the reference where the output cannot see the mutant
            ref = self.reference().index_select(0, mutants[:, 0])
            out = torch.where(hit.view((-1,) + (1,) * (out.ndim - 1)), out, ref)
        return out
