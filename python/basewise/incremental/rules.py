"""The rule tables: what the incremental engine knows about each operator.

Window propagation for ISM is a transformation of the captured graph, and like JAX's
interpreters (``batching.primitive_batchers``, ``ad.primitive_jvps``) it is a table of rules plus
a small driver:

* :data:`OP_RULES` maps an ATen operator overload to its :class:`OpRule`: how the changed hull of
  its output follows from its input's (``local``: it makes the node local, with a window rule and
  its parameters, or leaves it global with a note), whether it is linear in the window where it
  is global (``linear_global``: mean/sum over the length, a flatten feeding dense layers) and
  what it costs (``flops``). :func:`_classify` is the driver: an operator without an entry stays
  global, and the plan's report says ``no locality rule for <op>``.
* :data:`WINDOW_RULES` maps the window rule a local node was given (``"conv"``, ``"pool"``,
  ``"pointwise"``, ...) to its :class:`WindowRule`: which input windows the node reads for a given
  output window (``demand``, ``reads``), whether its producer may take exactly the window it reads
  (``pull_back``) and whether its output buffer is fresh (``fresh``, for in-place ops). How a rule
  runs on a window is the executor's table ``IncrementalPredictor._STEPS`` (rule name -> method).

Supporting a new operator whose output at a position depends only on its inputs at that position
is one entry: ``register_op_rule(torch.ops.mylib.myop.default, POINTWISE)``; the executor then
calls the operator on the windows. An operator with a new window behaviour adds a
:class:`WindowRule` and an executor step of the same name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .capture import _CONST, _GLOBAL, _LOCAL, _SYM, _Node

aten = torch.ops.aten

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _schema_bind(target: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Arguments of an ATen call by name, defaults filled in."""
    schema = target._schema
    out: Dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


def _one(v: Any) -> int:
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            return None  # type: ignore[return-value]
        return int(v[0])
    return int(v)


def _ceil_div(a: np.ndarray, b: int) -> np.ndarray:
    return -((-a) // b)


def _local_inputs(n: _Node) -> List[_Node]:
    return [i for i in n.inputs if i.kind == _LOCAL]


def _input_of(n: _Node, a: Any) -> _Node:
    """The graph node of fx argument ``a`` of ``n``."""
    return n.inputs[[j.node for j in n.inputs].index(a)]


def _set_local(n: _Node, rule: str, ldim: int, length: int, lo: np.ndarray, hi: np.ndarray,
               **params: Any) -> None:
    n.kind = _LOCAL
    n.rule = rule
    n.ldim = ldim
    n.length = length
    n.lo, n.hi = lo, hi
    n.params.update(params)


def _window_rule_out(a: np.ndarray, b: np.ndarray, k: int, s: int, d: int, pl: int,
                     lout: int) -> Tuple[np.ndarray, np.ndarray]:
    """Changed output hull of a sliding-window op from the changed input hull [a, b)."""
    empty = a >= b
    lo = _ceil_div(a + pl - (k - 1) * d, s)
    hi = (b - 1 + pl) // s + 1
    lo = np.clip(lo, 0, lout)
    hi = np.clip(hi, 0, lout)
    hi = np.where(empty | (hi < lo), lo, hi)
    return lo, hi


def _conv_geometry(n: _Node, b: Dict[str, Any], lin: int) -> Optional[Dict[str, int]]:
    k = int(b["weight"].meta["val"].shape[-1])
    s = _one(b["stride"])
    d = _one(b["dilation"])
    pad = b["padding"]
    if isinstance(pad, str):
        if pad == "valid":
            pl = 0
        elif pad == "same":
            pl = (d * (k - 1)) // 2
        else:
            return None
    else:
        pl = _one(pad)
    return {"k": k, "s": s, "d": d, "pl": pl}


def _view_ldim(ins: Tuple[int, ...], outs: Tuple[int, ...], ldim: int) -> Optional[int]:
    before = int(np.prod([abs(s) for s in ins[1:ldim]])) if ldim > 1 else 1
    after = int(np.prod([abs(s) for s in ins[ldim + 1:]])) if ldim + 1 < len(ins) else 1
    acc = 1
    for j in range(1, len(outs)):
        if acc == before and outs[j] == ins[ldim]:
            rest = int(np.prod([abs(s) for s in outs[j + 1:]])) if j + 1 < len(outs) else 1
            if rest == after:
                return j
        acc *= abs(outs[j])
    return None


def _prod(v: Sequence[int]) -> int:
    return int(np.prod([abs(s) for s in v])) if len(v) else 1


def _view_split(ins: Tuple[int, ...], outs: Tuple[int, ...], ldim: int) -> Optional[Tuple[int, int]]:
    """(j, p) when a reshape splits the length axis ``ldim`` of ``ins`` into outs[j] blocks of
    p = prod(outs[j + 1:e]) positions each (block-major, the axes around it unchanged), else None."""
    before, after, L = _prod(ins[1:ldim]), _prod(ins[ldim + 1:]), abs(ins[ldim])
    for j in range(1, len(outs)):
        if _prod(outs[1:j]) != before:
            continue
        for e in range(j + 2, len(outs) + 1):
            p = _prod(outs[j + 1:e])
            if abs(outs[j]) * p == L and _prod(outs[e:]) == after and p > 1 and abs(outs[j]) > 1:
                return j, p
    return None


def _view_merge(ins: Tuple[int, ...], outs: Tuple[int, ...], ldim: int) -> Optional[Tuple[int, int]]:
    """(j, p) when a reshape merges the length axis ``ldim`` with the axes after it (p positions
    per length step, block-major) into outs[j], the axes around them unchanged, else None."""
    before = _prod(ins[1:ldim])
    for j in range(1, len(outs)):
        if _prod(outs[1:j]) != before:
            continue
        for e in range(ldim + 2, len(ins) + 1):
            p = _prod(ins[ldim + 1:e])
            if abs(ins[ldim]) * p == abs(outs[j]) and _prod(ins[e:]) == _prod(outs[j + 1:]) and p > 1:
                return j, p
    return None


def _einsum_ldim(n: _Node, b: Dict[str, Any], x: _Node) -> Optional[int]:
    """Output length axis of an einsum over one local operand and constants that keeps the
    batch and length letters of the local operand (a per-position projection), else None."""
    eq = str(b["equation"]).replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    tens = list(b["tensors"])
    if len(terms) != len(tens):
        return None
    nodes = [_input_of(n, a) for a in tens]
    locs = [k for k, an in enumerate(nodes) if an.kind != _CONST]
    if len(locs) != 1 or nodes[locs[0]] is not x:
        return None
    term = terms[locs[0]]
    if len(term) != len(x.shape):
        return None
    bl, ll = term[0], term[x.ldim]
    if term.count(ll) != 1 or term.count(bl) != 1 or not rhs or rhs[0] != bl or rhs.count(ll) != 1:
        return None
    for k, tt in enumerate(terms):
        if k != locs[0] and (ll in tt or bl in tt):
            return None
    return rhs.index(ll)


# --------------------------------------------------------------------------------------------
# rule objects and tables
# --------------------------------------------------------------------------------------------

#: ``local(n, b, x, locs)``: n is the node, b its arguments by name (:func:`_schema_bind`), locs
#: its local inputs and x = locs[0]. Makes n local (:func:`_set_local`) or leaves it global,
#: optionally with a note saying why.
LocalFn = Callable[[_Node, Dict[str, Any], _Node, List[_Node]], None]
#: ``linear_global(n, b, x)``: for a global node with one local input x, marks n as linear in
#: x's window (``n.glinear``) or leaves it alone.
LinearGlobalFn = Callable[[_Node, Dict[str, Any], _Node], None]


@dataclasses.dataclass(frozen=True)
class OpRule:
    """What the engine knows about one operator family.

    Attributes:
        name: the family (for reports and tests).
        local: the locality rule (:data:`LocalFn`), or None: the operator is always global.
        linear_global: the linear-global rule (:data:`LinearGlobalFn`), or None.
        flops: FLOPs of the op on one sample at full length, ``flops(n) -> float``, or None
            (one per output element).
        shape_args: the op may read sizes computed at run time from the batch size (reshapes
            to ``(B, ...)``); other ops reading such a size stay global.
    """

    name: str
    local: Optional[LocalFn] = None
    linear_global: Optional[LinearGlobalFn] = None
    flops: Optional[Callable[[_Node], float]] = None
    shape_args: bool = False


#: ATen operator overload -> :class:`OpRule`. Filled below; extend with :func:`register_op_rule`.
OP_RULES: Dict[Any, OpRule] = {}


def register_op_rule(targets: Union[Any, Iterable[Any]], rule: OpRule) -> None:
    """Register ``rule`` for one ATen operator overload (e.g. ``torch.ops.aten.relu.default`` or
    a ``torch.library`` custom op's ``torch.ops.mylib.op.default``) or several.

    Plans captured before keep their classification (:func:`basewise.incremental.plan_ism` caches
    them per model): pass ``use_cache=False`` or use a fresh model to see the new rule.

    Example:
        >>> register_op_rule(torch.ops.aten.relu.default, POINTWISE)
    """
    if isinstance(targets, torch._ops.OpOverload):
        targets = [targets]
    if not isinstance(rule, OpRule):
        raise TypeError(f"rule: expected an OpRule, got {type(rule).__name__}")
    for t in targets:
        if not isinstance(t, torch._ops.OpOverload):
            raise TypeError(f"targets: expected ATen operator overloads, got {t!r}")
        OP_RULES[t] = rule


def _register(targets: Iterable[Any], **fields: Any) -> OpRule:
    rule = OpRule(**fields)
    register_op_rule(list(targets), rule)
    return rule


# --------------------------------------------------------------------------------------------
# locality rules: how the changed hull of the output follows from the input's
# --------------------------------------------------------------------------------------------


def _same_geom(i: _Node, x: _Node) -> bool:
    return i.ldim == x.ldim and i.length == x.length


def _local_pointwise(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Elementwise: the output at a position depends only on the inputs at that position."""
    fx = n.node
    out_shape = n.shape
    if not all(_same_geom(i, x) for i in locs):
        n.note = "inputs with different length axes"
        return
    ndim = len(out_shape)
    # output must keep the length axis at the same place with the same size
    lshift = ndim - len(x.shape)
    ld = x.ldim + lshift
    if ld < 1 or out_shape[ld] != x.length:
        return
    for i in locs:
        if len(i.shape) != ndim or i.shape[i.ldim] != x.length:
            return
    # constant tensor operands must not vary along the length axis
    for a in fx.all_input_nodes:
        ai = _input_of(n, a)
        if ai.kind == _CONST:
            v = a.meta.get("val")
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                pos = ld - (ndim - v.ndim)
                if pos >= 0 and v.shape[pos] != 1:
                    n.note = "constant operand varies along the length"
                    return
                if v.ndim >= ndim and v.shape[0] != 1:
                    return
    lo = np.min(np.stack([i.lo for i in locs]), axis=0)
    hi = np.max(np.stack([i.hi for i in locs]), axis=0)
    _set_local(n, "pointwise", ld, x.length, lo, hi)


def _local_dropout(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    if b["train"]:
        n.note = "dropout in training mode"
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


def _local_batch_norm(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    if n.target is aten.batch_norm.default and b["training"]:
        n.note = "batch norm in training mode"
        return
    if x.ldim == 1 or n.inputs[0] is not x or len(locs) != 1:
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


def _local_conv1d(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    if n.inputs[0] is not x or len(locs) != 1 or x.ldim != len(x.shape) - 1 or len(x.shape) != 3:
        return
    geo = _conv_geometry(n, b, x.length)
    if geo is None:
        return
    lout = n.shape[-1]
    lo, hi = _window_rule_out(x.lo, x.hi, geo["k"], geo["s"], geo["d"], geo["pl"], lout)
    groups = int(b["groups"])
    _set_local(n, "conv", 2, lout, lo, hi, groups=groups, **geo)


def _local_conv_transpose1d(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    if n.inputs[0] is not x or len(locs) != 1 or x.ldim != len(x.shape) - 1 or len(x.shape) != 3:
        return
    k = int(b["weight"].meta["val"].shape[-1])
    s_, pl, d = _one(b["stride"]), _one(b["padding"]), _one(b["dilation"])
    lout = n.shape[-1]
    empty = x.lo >= x.hi
    lo = np.clip(x.lo * s_ - pl, 0, lout)
    hi = np.clip((x.hi - 1) * s_ - pl + (k - 1) * d + 1, 0, lout)
    hi = np.where(empty | (hi < lo), lo, hi)
    _set_local(n, "tconv", 2, lout, lo, hi, k=k, s=s_, pl=pl, d=d, groups=int(b["groups"]))


def _local_conv2d_1x1(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """A 1x1 two-dimensional convolution is a per-position projection over channels (the logits
    of Enformer's attention pooling on the (B, C, L/p, p) view)."""
    w = b["weight"].meta["val"]
    pad = b["padding"]
    if n.inputs[0] is not x or len(locs) != 1 or len(x.shape) != 4 or x.ldim not in (2, 3) \
            or tuple(w.shape[2:]) != (1, 1) or any(int(s) != 1 for s in b["stride"]) \
            or (not isinstance(pad, str) and any(int(q) != 0 for q in pad)):
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


def _local_convolution(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """``aten.convolution``: 1-d, transposed 1-d or 2-d, by its arguments."""
    if len(b["stride"]) == 1:
        (_local_conv_transpose1d if b["transposed"] else _local_conv1d)(n, b, x, locs)
    elif len(b["stride"]) == 2 and not b["transposed"]:
        _local_conv2d_1x1(n, b, x, locs)
    else:
        n.note = "no locality rule"


def _local_pool(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    t = n.target
    if x.ldim != len(x.shape) - 1 or len(locs) != 1:
        return
    k = _one(b["kernel_size"])
    s = _one(b["stride"]) if _one(b["stride"]) is not None else k
    pl = _one(b["padding"])
    d = _one(b["dilation"]) if "dilation" in b else 1
    lout = n.shape[-1]
    if t is aten.avg_pool1d.default:
        full = (x.length + 2 * pl - k) // s + 1
        if (pl > 0 and not b["count_include_pad"]) or lout != full:
            n.note = "avg pool with partial windows"
            return
    lo, hi = _window_rule_out(x.lo, x.hi, k, s, d, pl, lout)
    _set_local(n, "pool", len(n.shape) - 1, lout, lo, hi, k=k, s=s, d=d, pl=pl,
               kind="max" if t is aten.max_pool1d.default else "avg")


def _local_adaptive_avg_pool(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Equal bins only (to 1 bin it is linear-global instead)."""
    o = _one(b["output_size"])
    if o > 1 and x.length % o == 0 and x.ldim == len(x.shape) - 1:
        k = x.length // o
        lo, hi = _window_rule_out(x.lo, x.hi, k, k, 1, 0, o)
        _set_local(n, "pool", len(n.shape) - 1, o, lo, hi, k=k, s=k, d=1, pl=0, kind="avg")


def _local_slice(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """A crop along the length is a negative pad; slices of other axes are elementwise."""
    dim = b["dim"] % len(x.shape)
    if dim == 0:
        if (b["start"] or 0) == 0 and b["step"] == 1 and (b["end"] is None or b["end"] >= 2 ** 62):
            _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)
        return
    if dim != x.ldim:
        _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)
        return
    if b["step"] != 1:
        return
    start = b["start"] or 0
    start = max(0, start + x.length if start < 0 else start)
    start = min(start, x.length)
    lout = n.shape[dim]
    lo = np.clip(x.lo - start, 0, lout)
    hi = np.clip(x.hi - start, 0, lout)
    hi = np.maximum(hi, lo)
    _set_local(n, "pad", x.ldim, lout, lo, hi, pl=-start, value=0.0)


def _local_flip(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    if len(locs) != 1:
        return
    nd = len(x.shape)
    dims = sorted({dd % nd for dd in b["dims"]})
    if 0 in dims:
        return
    if x.ldim not in dims:
        _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)
        return
    # reverse along the length (a reverse complement): p -> length - 1 - p
    lo = np.where(x.hi > x.lo, x.length - x.hi, 0)
    hi = np.where(x.hi > x.lo, x.length - x.lo, 0)
    _set_local(n, "flip", x.ldim, x.length, lo, hi, dims=dims)


def _local_pad(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Constant pads (along the length: a shifted window; elsewhere: applied to the window)."""
    if n.target is aten.pad.default and b["mode"] != "constant":
        return
    pads = list(b["pad"])
    value = b["value"] if b["value"] is not None else 0.0
    nd = len(x.shape)
    # pads apply from the last dim backwards
    lpos = nd - 1 - x.ldim
    pl = 0
    other = []
    for j in range(len(pads) // 2):
        if j == lpos:
            pl = int(pads[2 * j])
            other += [0, 0]
        else:
            other += [int(pads[2 * j]), int(pads[2 * j + 1])]
    lout = n.shape[x.ldim]
    lo = np.clip(x.lo + pl, 0, lout)
    hi = np.clip(x.hi + pl, 0, lout)
    hi = np.maximum(hi, lo)
    _set_local(n, "pad", x.ldim, lout, lo, hi, pl=pl, value=float(value),
               other=other if any(other) else None)


def _local_cat(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Concatenation of local tensors of one geometry along a channel-like axis."""
    dim = b["dim"] % len(n.shape)
    tens = b["tensors"]
    if dim == 0 or dim == x.ldim:
        return
    for a in tens:
        an = _input_of(n, a)
        if an.kind != _LOCAL or not _same_geom(an, x):
            return
    lo = np.min(np.stack([i.lo for i in locs]), axis=0)
    hi = np.max(np.stack([i.hi for i in locs]), axis=0)
    _set_local(n, "pointwise", x.ldim, x.length, lo, hi)


def _local_permute(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    t = n.target
    nd = len(x.shape)
    if t is aten.transpose.int:
        d0, d1 = b["dim0"] % nd, b["dim1"] % nd
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    elif t is aten.permute.default:
        perm = [p % nd for p in b["dims"]]
    else:
        return
    if perm[0] != 0:
        return
    ld = perm.index(x.ldim)
    _set_local(n, "pointwise", ld, x.length, x.lo, x.hi)


def _local_squeeze(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    t = n.target
    nd = len(x.shape)
    if t is aten.unsqueeze.default:
        d = b["dim"] % (nd + 1)
        if d == 0:
            return
        ld = x.ldim + (1 if d <= x.ldim else 0)
    else:
        dims = b["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [dd % nd for dd in dims if x.shape[dd % nd] == 1]
        if 0 in dims or x.ldim in dims:
            return
        ld = x.ldim - sum(1 for dd in dims if dd < x.ldim)
    _set_local(n, "pointwise", ld, x.length, x.lo, x.hi)


def _local_view(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Reshapes that keep the length axis whole, split it into blocks or merge blocks back."""
    out_shape = n.shape
    if n.inputs[0] is not x or len(locs) != 1:
        return
    ld = _view_ldim(x.shape, out_shape, x.ldim)
    if ld is not None:
        _set_local(n, "view", ld, x.length, x.lo, x.hi)
        return
    split = _view_split(x.shape, out_shape, x.ldim)
    if split is not None:
        # (.., L, ..) -> (.., L/p, p, ..): the blocks are the new length axis and the p
        # axis is a channel-like window axis; a changed block is any block the input hull
        # touches, exactly as for a pool of size = stride = p
        ld, p = split
        lout = out_shape[ld]
        lo, hi = _window_rule_out(x.lo, x.hi, p, p, 1, 0, lout)
        _set_local(n, "split", ld, lout, lo, hi, p=p)
        return
    merge = _view_merge(x.shape, out_shape, x.ldim)
    if merge is not None:
        # (.., L/p, p, ..) -> (.., L, ..): block b becomes positions [b p, (b + 1) p)
        ld, p = merge
        lout = out_shape[ld]
        empty = x.lo >= x.hi
        lo = np.where(empty, 0, x.lo * p)
        hi = np.where(empty, 0, x.hi * p)
        _set_local(n, "merge", ld, lout, lo, hi, p=p)
        return
    n.note = "reshape mixes the length axis"


def _local_einsum(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    ld = _einsum_ldim(n, b, x)
    if ld is None:
        n.note = "einsum mixes the length axis"
        return
    _set_local(n, "pointwise", ld, x.length, x.lo, x.hi)


def _local_layer_norm(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    k = len(b["normalized_shape"])
    if x.ldim >= len(x.shape) - k:
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


def _local_softmax(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    dim = b["dim"] % len(x.shape)
    if dim == x.ldim or dim == 0:
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


def _local_reduce(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """Reductions over non-length axes."""
    dims = b["dim"]
    if dims is None or len(dims) == 0:
        return
    nd = len(x.shape)
    dims = [dd % nd for dd in dims]
    if 0 in dims or x.ldim in dims or b.get("dtype") is not None:
        return
    keep = b["keepdim"]
    ld = x.ldim if keep else x.ldim - sum(1 for dd in dims if dd < x.ldim)
    _set_local(n, "pointwise", ld, x.length, x.lo, x.hi)


def _local_linear(n: _Node, b: Dict[str, Any], x: _Node, locs: List[_Node]) -> None:
    """A dense layer over a non-length axis."""
    if n.inputs[0] is not x or len(locs) != 1 or x.ldim == len(x.shape) - 1:
        return
    _set_local(n, "pointwise", x.ldim, x.length, x.lo, x.hi)


# --------------------------------------------------------------------------------------------
# linear-global rules: global ops applied to the window's change only
# --------------------------------------------------------------------------------------------


def _lg_reduce(n: _Node, b: Dict[str, Any], x: _Node) -> None:
    """mean / sum over axes that include the length."""
    t = n.target
    if n.inputs[0] is not x or b.get("dtype") is not None:
        return
    dims = b["dim"]
    nd = len(x.shape)
    if dims is None or len(dims) == 0:
        dims = list(range(nd))
    dims = sorted(dd % nd for dd in dims)
    if 0 in dims or x.ldim not in dims:
        return
    count = int(np.prod([x.shape[dd] for dd in dims])) if t is aten.mean.dim else 1
    n.glinear = "reduce"
    n.params.update(dims=dims, keepdim=bool(b["keepdim"]), scale=1.0 / count)


def _lg_adaptive_avg_pool(n: _Node, b: Dict[str, Any], x: _Node) -> None:
    if _one(b["output_size"]) == 1 and x.ldim == len(x.shape) - 1:
        n.glinear = "reduce"
        n.params.update(dims=[len(x.shape) - 1], keepdim=True, scale=1.0 / x.length)


def _lg_flatten(n: _Node, b: Dict[str, Any], x: _Node) -> None:
    """Flatten of a (B, C, L) / (B, L, C) tensor whose every consumer is a dense layer."""
    if len(x.shape) != 3 or len(n.shape) != 2 or n.inputs[0] is not x:
        return
    if not n.consumers or not all(
            c.target is aten.linear.default and c.inputs[0] is n and all(
                j.kind == _CONST for j in c.inputs[1:]) for c in n.consumers):
        return
    n.glinear = "flatten"
    for c in n.consumers:
        c.glinear = "fc"


# --------------------------------------------------------------------------------------------
# FLOP rules (2 per multiply-add, one sample at full length)
# --------------------------------------------------------------------------------------------


def _per_tensor_output(fn: Callable[[_Node, Dict[str, Any], int], float]) -> Callable[[_Node], float]:
    """A FLOP rule of an op with one tensor output: ``fn(n, args by name, elements per sample)``;
    0 when the output is not a tensor."""
    def rule(n: _Node) -> float:
        t, fx = n.target, n.node
        if not isinstance(fx.meta.get("val"), torch.Tensor):
            return 0.0
        try:
            b = _schema_bind(t, fx.args, fx.kwargs) if isinstance(t, torch._ops.OpOverload) else {}
        except Exception:  # noqa: BLE001
            b = {}
        return fn(n, b, _prod(n.shape[1:]))
    rule.__doc__ = fn.__doc__
    return rule


@_per_tensor_output
def _flops_conv(n: _Node, b: Dict[str, Any], numel: int) -> float:
    t = n.target
    w = b["weight"].meta["val"]
    per_out = int(np.prod(w.shape[1:]))
    if t is aten.convolution.default and b["transposed"] or t is aten.conv_transpose1d.default:
        xin = b["input"].meta["val"]
        return 2.0 * int(np.prod(xin.shape[1:])) * w.shape[1] * int(np.prod(w.shape[2:]))
    return 2.0 * numel * per_out


@_per_tensor_output
def _flops_linear(n: _Node, b: Dict[str, Any], numel: int) -> float:
    w = b["weight"].meta["val"]
    return 2.0 * numel * int(w.shape[-1])


@_per_tensor_output
def _flops_matmul(n: _Node, b: Dict[str, Any], numel: int) -> float:
    fx = n.node
    a = fx.all_input_nodes[0].meta.get("val")
    k = int(a.shape[-1]) if isinstance(a, torch.Tensor) and a.ndim else 1
    if n.target is aten.addmm.default:
        a = fx.all_input_nodes[1].meta.get("val")
        k = int(a.shape[-1])
    return 2.0 * numel * k


@_per_tensor_output
def _flops_sdpa(n: _Node, b: Dict[str, Any], numel: int) -> float:
    q = b["query"].meta["val"]
    k = b["key"].meta["val"]
    return 4.0 * int(np.prod(q.shape[1:])) * int(k.shape[-2])


def _flops_rnn(n: _Node) -> float:
    """Recurrent layers (aten.gru/lstm/rnn_*.input, args (input, hx, params, has_biases,
    num_layers, dropout, train, bidirectional, batch_first)): 2 FLOPs per weight-matrix entry per
    time step (their output is a tuple)."""
    fx = n.node
    try:
        x = fx.args[0].meta["val"]
        steps = int(x.shape[1] if fx.args[-1] else x.shape[0])
        weights = [w.meta["val"] for w in fx.args[2]]
        return 2.0 * steps * float(sum(int(w.numel()) for w in weights if w.ndim == 2))
    except Exception:  # noqa: BLE001 - an unexpected signature: cost unknown
        return 0.0


# --------------------------------------------------------------------------------------------
# the operator table
# --------------------------------------------------------------------------------------------

# elementwise (pointwise) operators: the output at a position depends only on the inputs at that
# position. Non-tensor arguments are constants.
_POINTWISE = {
    aten.relu.default, aten.relu_.default, aten.gelu.default, aten.sigmoid.default,
    aten.tanh.default, aten.exp.default, aten.log.default, aten.softplus.default,
    aten.silu.default, aten.elu.default, aten.leaky_relu.default, aten.hardtanh.default,
    aten.abs.default, aten.neg.default, aten.square.default, aten.sqrt.default,
    aten.rsqrt.default, aten.sin.default, aten.cos.default, aten.log1p.default,
    aten.expm1.default, aten.erf.default, aten.reciprocal.default, aten.sign.default,
    aten.mish.default, aten.hardsigmoid.default, aten.hardswish.default, aten.relu6.default,
    aten.log_sigmoid.default if hasattr(aten, "log_sigmoid") else aten.sigmoid.default,
    aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.clamp.default, aten.clamp_min.default,
    aten.clamp_max.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor,
    aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.rsub.Scalar,
    aten.rsub.Tensor, aten.maximum.default, aten.minimum.default, aten.where.self,
    aten.div.Tensor_mode, aten.alias.default, aten.clone.default, aten.contiguous.default,
    aten.detach.default, aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
    aten.type_as.default, aten.lift_fresh_copy.default, aten.prelu.default,
    aten.gt.Scalar, aten.lt.Scalar, aten.ge.Scalar, aten.le.Scalar, aten.gt.Tensor, aten.lt.Tensor,
    aten.logical_not.default, aten.masked_fill.Scalar,
}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
          aten.flatten.using_ints, aten.unflatten.int}
_RNN_OPS = tuple(getattr(aten, name).input for name in ("gru", "lstm", "rnn_tanh", "rnn_relu")
                 if hasattr(aten, name))

#: The rule of every elementwise operator (register a custom elementwise op with it).
POINTWISE = _register(_POINTWISE, name="pointwise", local=_local_pointwise)
_register([aten.dropout.default, aten.feature_dropout.default], name="dropout", local=_local_dropout)
_register([aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default], name="batch_norm",
          local=_local_batch_norm)
_register([aten.conv1d.default, aten.conv1d.padding], name="conv1d", local=_local_conv1d, flops=_flops_conv)
_register([aten.conv_transpose1d.default], name="conv_transpose1d", local=_local_conv_transpose1d,
          flops=_flops_conv)
_register([aten.convolution.default], name="convolution", local=_local_convolution, flops=_flops_conv)
_register([aten.conv2d.default], name="conv2d", local=_local_conv2d_1x1, flops=_flops_conv)
# (counted as one FLOP per output element, as before the table existed)
_register([aten.conv2d.padding], name="conv2d", local=_local_conv2d_1x1)
_register([aten.max_pool1d.default, aten.avg_pool1d.default], name="pool1d", local=_local_pool)
_register([aten.adaptive_avg_pool1d.default], name="adaptive_avg_pool1d", local=_local_adaptive_avg_pool,
          linear_global=_lg_adaptive_avg_pool)
_register([aten.slice.Tensor], name="slice", local=_local_slice)
_register([aten.flip.default], name="flip", local=_local_flip)
_register([aten.pad.default, aten.constant_pad_nd.default], name="pad", local=_local_pad)
_register([aten.cat.default], name="cat", local=_local_cat)
_register([aten.transpose.int, aten.permute.default, aten.t.default], name="permute", local=_local_permute)
_register([aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims], name="squeeze", local=_local_squeeze)
_register([aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints],
          name="view", local=_local_view, linear_global=_lg_flatten, shape_args=True)
_register([aten.unflatten.int], name="view", local=_local_view, shape_args=True)
_register([aten.einsum.default], name="einsum", local=_local_einsum, flops=_flops_matmul)
_register([aten.layer_norm.default], name="layer_norm", local=_local_layer_norm)
_register([aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default],
          name="softmax", local=_local_softmax)
_register([aten.mean.dim, aten.sum.dim_IntList], name="reduce", local=_local_reduce, linear_global=_lg_reduce)
_register([aten.amax.default, aten.amin.default, aten.logsumexp.default], name="reduce", local=_local_reduce)
_register([aten.linear.default], name="linear", local=_local_linear, flops=_flops_linear)
# global operators with a known cost
_register([aten.matmul.default, aten.bmm.default, aten.mm.default, aten.addmm.default, aten.baddbmm.default],
          name="matmul", flops=_flops_matmul)
_register([aten.scaled_dot_product_attention.default], name="attention", flops=_flops_sdpa)
_register(_RNN_OPS, name="rnn", flops=_flops_rnn)


# --------------------------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------------------------


def _classify(n: _Node, L: int) -> None:
    """Decide whether n is local, and if so its changed hull. Leaves n global otherwise."""
    fx = n.node
    t = n.target
    rule = OP_RULES.get(t)
    deps = [i for i in n.inputs if i.kind != _CONST]
    if any(i.kind == _GLOBAL for i in deps):
        n.note = "reads a global tensor"
        return
    if any(i.kind == _SYM for i in deps) and not (rule is not None and rule.shape_args):
        n.note = "reads a shape computed at run time"
        return
    locs = _local_inputs(n)
    if not locs:
        return
    if not isinstance(t, torch._ops.OpOverload):
        n.note = "not an ATen operator"
        return
    b = _schema_bind(t, fx.args, fx.kwargs)
    out_shape = n.shape
    if not out_shape or out_shape[0] != -1:
        n.note = "output has no batch axis"
        return
    if rule is None or rule.local is None:
        n.note = f"no locality rule for {t}"
        return
    rule.local(n, b, locs[0], locs)


def _classify_linear_global(n: _Node) -> None:
    """Mark a global node that is linear in its one local input's window (``n.glinear``)."""
    t = n.target
    locs = _local_inputs(n)
    if len(locs) != 1 or any(i.kind in (_GLOBAL, _SYM) for i in n.inputs if i is not locs[0]):
        return
    x = locs[0]
    if not isinstance(t, torch._ops.OpOverload):
        return
    rule = OP_RULES.get(t)
    if rule is None or rule.linear_global is None:
        return
    rule.linear_global(n, _schema_bind(t, n.node.args, n.node.kwargs), x)


def _flops_per_sample(n: _Node) -> float:
    """FLOPs of the op on one sample at full length (2 per multiply-add): the op's FLOP rule, else
    one per output element."""
    rule = OP_RULES.get(n.target)
    if rule is not None and rule.flops is not None:
        return rule.flops(n)
    if not isinstance(n.node.meta.get("val"), torch.Tensor):
        return 0.0
    return float(_prod(n.shape[1:]))


# --------------------------------------------------------------------------------------------
# window rules: which input windows a local node reads
# --------------------------------------------------------------------------------------------

#: One input window a local node reads: (input node, offset per position p (L,), width, pad
#: value outside the input or None).
Read = Tuple[_Node, np.ndarray, int, Optional[float]]


@dataclasses.dataclass(frozen=True)
class WindowRule:
    """How a local node of one window rule reads its inputs.

    Attributes:
        name: the rule (``_Node.rule``).
        demand: ``demand(n, lo, hi)``: the input intervals [q, qe) (along each local input's
            length axis) that the outputs [lo, hi) need, as ``[(input, (q, qe)), ...]``.
        reads: ``reads(n)``: the input windows the node's window needs, per position p, as
            ``([Read, ...], rel)``; ``rel`` (or None) is the offset of the node's window in the
            output of the op run on those inputs (transposed convolution, block merge).
        pull_back: a producer whose only consumer is this node may take exactly the window the
            node reads (no gather between them).
        fresh: whether the node's output buffer is new (``"new"``, an in-place consumer may
            overwrite it), new when its assembled input is (``"assembly"``) or shares its
            input's buffer (``"inherit"``).
    """

    name: str
    demand: Callable[[_Node, Any, Any], List[Tuple[_Node, Tuple[Any, Any]]]]
    reads: Optional[Callable[[_Node], Tuple[List[Read], Optional[np.ndarray]]]] = None
    pull_back: bool = False
    fresh: str = "new"


def _demand_sliding(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    p = n.params
    return [(n.inputs[0], (lo * p["s"] - p["pl"], (hi - 1) * p["s"] - p["pl"] + (p["k"] - 1) * p["d"] + 1))]


def _reads_sliding(n: _Node) -> Tuple[List[Read], None]:
    p = n.params
    q = n.off * p["s"] - p["pl"]
    w = (n.width - 1) * p["s"] + (p["k"] - 1) * p["d"] + 1
    pad = 0.0 if n.rule == "conv" or p.get("kind") == "avg" else -math.inf
    return [(n.inputs[0], q, w, pad)], None


def _demand_tconv(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    p = n.params
    q = -((-(lo + p["pl"] - (p["k"] - 1) * p["d"])) // p["s"])
    qe = (hi - 1 + p["pl"]) // p["s"] + 1
    return [(n.inputs[0], (q, qe))]


def _reads_tconv(n: _Node) -> Tuple[List[Read], np.ndarray]:
    p = n.params
    kd = (p["k"] - 1) * p["d"]
    qi = (n.off + p["pl"] - kd) // p["s"]
    need_in = int(((n.off + n.width - 1 + p["pl"]) // p["s"] - qi + 1).max())
    rel = n.off - (qi * p["s"] - p["pl"])
    need_out = int((rel + n.width).max())
    wi = max(need_in, -(-(need_out - kd - 1) // p["s"]) + 1, 1)
    return [(n.inputs[0], qi, wi, 0.0)], rel


def _demand_pad(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    pl = n.params["pl"]
    return [(_local_inputs(n)[0], (lo - pl, hi - pl))]


def _reads_pad(n: _Node) -> Tuple[List[Read], None]:
    return [(_local_inputs(n)[0], n.off - n.params["pl"], n.width, n.params["value"])], None


def _demand_flip(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    return [(_local_inputs(n)[0], (n.length - hi, n.length - lo))]


def _reads_flip(n: _Node) -> Tuple[List[Read], None]:
    return [(_local_inputs(n)[0], n.length - n.off - n.width, n.width, None)], None


def _demand_split(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    p = n.params["p"]
    return [(n.inputs[0], (lo * p, hi * p))]


def _reads_split(n: _Node) -> Tuple[List[Read], None]:
    pp = n.params["p"]
    return [(n.inputs[0], n.off * pp, n.width * pp, None)], None


def _demand_merge(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    p = n.params["p"]
    return [(n.inputs[0], (lo // p, -(-hi // p)))]


def _reads_merge(n: _Node) -> Tuple[List[Read], np.ndarray]:
    # input blocks [qi, qi + wi) hold the window; it starts rel positions in (shifted inward at
    # the end so that the blocks stay inside the input)
    pp, src = n.params["p"], n.inputs[0]
    qi = n.off // pp
    wi = min(src.length, int((-(-(n.off + n.width) // pp) - qi).max()))
    qi = np.minimum(qi, src.length - wi)
    rel = n.off - qi * pp
    return [(src, qi, wi, None)], rel


def _demand_same(n: _Node, lo: Any, hi: Any) -> List[Tuple[_Node, Tuple[Any, Any]]]:
    return [(i, (lo, hi)) for i in _local_inputs(n)]


def _reads_same(n: _Node) -> Tuple[List[Read], None]:
    return [(src, n.off, n.width, None) for src in _local_inputs(n)], None


#: window rule name -> :class:`WindowRule`
WINDOW_RULES: Dict[str, WindowRule] = {r.name: r for r in (
    WindowRule("input", _demand_same),  # the one-hot input: its window is the mutated column
    WindowRule("delta", _demand_sliding),  # the first conv1d, from weight differences
    WindowRule("conv", _demand_sliding, _reads_sliding),
    WindowRule("pool", _demand_sliding, _reads_sliding, pull_back=True),
    WindowRule("tconv", _demand_tconv, _reads_tconv),
    WindowRule("pad", _demand_pad, _reads_pad, pull_back=True, fresh="assembly"),
    WindowRule("flip", _demand_flip, _reads_flip),
    WindowRule("split", _demand_split, _reads_split, pull_back=True, fresh="inherit"),
    WindowRule("merge", _demand_merge, _reads_merge, fresh="inherit"),
    WindowRule("pointwise", _demand_same, _reads_same, pull_back=True),
    WindowRule("view", _demand_same, _reads_same, pull_back=True, fresh="inherit"),
)}


def _local_input_demands(n: _Node) -> List[Tuple[_Node, Tuple[int, int]]]:
    """Input intervals (along each local input's length axis) needed for n's demanded outputs."""
    return WINDOW_RULES[n.rule].demand(n, n.dlo, n.dhi)
