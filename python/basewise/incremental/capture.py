"""Graph capture: the model as a graph of ATen operators with static shapes, and the plan cache.

:func:`capture` records ``model`` (then the prediction transform) with ``torch.export``
(non-strict, dynamic batch dimension; see the package docstring for why) and turns the exported
program into a :class:`_Graph` of :class:`_Node` objects: one per ATen call, placeholder or
constant, with its static shape, inputs, consumers and (after planning) its locality rule and
window. :func:`_fingerprint` keys the per-model plan cache (:data:`_PLAN_CACHE`) that
:func:`basewise.incremental.plan_ism` consults.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .._model import eval_mode, is_lightning_like, plain_attributes, preserved_model_state, tensor_digest

# Node kinds inside the graph plan
_CONST, _INPUT, _LOCAL, _GLOBAL, _SYM = "const", "input", "local", "global", "sym"


@dataclasses.dataclass(eq=False)
class _Node:
    node: Any  # torch.fx.Node
    name: str
    target: Any
    kind: str = _CONST
    rule: str = ""  # local rule: pointwise / conv / pool / slice / pad / view / reduce / delta
    ldim: int = -1
    length: int = 0
    shape: Tuple[int, ...] = ()
    lo: Optional[np.ndarray] = None  # changed hull per position p (len L)
    hi: Optional[np.ndarray] = None
    dlo: int = 0  # demanded interval along ldim
    dhi: int = 0
    width: int = 0  # static window width (0 = never changed where used)
    off: Optional[np.ndarray] = None  # window offset per p
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    consumers: List["_Node"] = dataclasses.field(default_factory=list)
    inputs: List["_Node"] = dataclasses.field(default_factory=list)
    glinear: str = ""  # "", "reduce", "fc"
    note: str = ""


class _Graph:
    """Captured graph plus the per-node analysis."""

    def __init__(self) -> None:
        self.nodes: List[_Node] = []
        self.by_fx: Dict[Any, _Node] = {}
        self.input: Optional[_Node] = None
        self.outputs: Any = None  # fx output args structure
        self.length = 0
        self.model_ref: Optional[weakref.ref] = None  # the model, weakly (plans are cached per model)
        self.transform: Optional[Any] = None
        self.transform_fn_ref: Optional[Callable[[], Any]] = None  # a plain-function transform, weakly
        self.placeholders: Dict[str, Tuple[str, str]] = {}  # name -> (kind, fqn)
        self.constants: Dict[str, Any] = {}
        self.tuple_output = False


class _Wrapped(torch.nn.Module):
    """The function mutated: model, then (for plain modules) the prediction transform."""

    def __init__(self, model: torch.nn.Module, transform: Optional[Callable]) -> None:
        super().__init__()
        self.model = model
        if isinstance(transform, torch.nn.Module):
            self.transform = transform
        else:
            self._transform_fn = transform

    def forward(self, x: torch.Tensor) -> Any:
        y = self.model(x)
        t = getattr(self, "transform", None) or getattr(self, "_transform_fn", None)
        if t is not None:
            y = t(y)
        return y


# model -> {key: (plan, pins)}. Keys hold id()s of the submodules and transforms; ``pins`` holds
# strong references to exactly those objects, so none of them can be freed and its address reused
# by a fresh object (e.g. a new prediction_transform per call) while the entry exists: an id in a
# key then always means the same object. At most 8 entries per model; the entries go with the model.
_PLAN_CACHE: "weakref.WeakKeyDictionary[Any, Dict[Any, Tuple[Any, Tuple]]]" = weakref.WeakKeyDictionary()
_PLAN_LOCK = threading.Lock()


def _fingerprint(model: torch.nn.Module, transform: Any) -> Tuple[Tuple, Tuple]:
    """(key, pins): the cache key of ``model`` + ``transform`` and the objects whose ids it holds."""
    named = list(model.named_modules())
    mods = tuple((n, type(m).__qualname__, id(m), m.training) for n, m in named)
    params = tuple((n, tuple(p.shape), p.dtype, str(p.device)) for n, p in model.named_parameters())
    bufs = tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    tr = getattr(model, "transform", None)
    # the captured program specialises on plain attributes read by forward (a scale, a flag);
    # weight *values* are read live by the predictor, and the tensors derived from them are
    # built by every predictor (IncrementalPredictor._derive_weights)
    attrs = plain_attributes(model)
    if isinstance(transform, torch.nn.Module):
        attrs += plain_attributes(transform)
    # plain tensor attributes (not parameters or buffers) are captured as constants of the program
    consts = [v for m in model.modules() for k, v in vars(m).items()
              if isinstance(v, torch.Tensor) and not k.startswith("_")]
    if consts:
        attrs += (tensor_digest(consts),)
    key = (mods, params, bufs, id(transform), id(tr), type(tr).__qualname__ if tr is not None else None,
           attrs)
    pins = (tuple(m for n, m in named if m is not model), transform, tr)
    return key, pins


class _Unsupported(Exception):
    """The model cannot be planned; the message is the plan's ``reason``."""


def capture(model: torch.nn.Module, length: int, transform: Optional[Callable],
            device: torch.device, dtype: torch.dtype) -> "_Graph":
    """Capture ``model`` (then ``transform``) for (B, 4, ``length``) inputs as a :class:`_Graph`.

    Raises :class:`_Unsupported` (its message is the plan's reason) when ``torch.export`` cannot
    capture the model, or the graph has several inputs, none, or a tuple output."""
    with preserved_model_state(model):
        eval_mode(model)
        wrapped = _Wrapped(model, None if is_lightning_like(model) else transform)
        x = torch.zeros(2, 4, length, device=device, dtype=dtype)
        x[:, 0] = 1
        try:
            from torch.export import Dim

            loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export",
                                                       "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
            levels = [lg.level for lg in loggers]
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            try:
                # the capture is internal: torch.export's warnings about the user's model (e.g.
                # "tensor attributes ... were assigned during export" for RNN modules) are noise
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ep = torch.export.export(wrapped, (x,), dynamic_shapes=({0: Dim("batch")},),
                                             strict=False)
            finally:
                for lg, lv in zip(loggers, levels):
                    lg.setLevel(lv)
        except Exception as e:  # noqa: BLE001 - any capture failure means "unsupported"
            msg = str(e).strip().split("\n")[0][:300]
            raise _Unsupported(f"torch.export could not capture the model: {type(e).__name__}: {msg}") from None
    g = _build_graph(ep, wrapped, length)
    if g.tuple_output:
        raise _Unsupported("the model returns a tuple/list of outputs; pass a "
                           "prediction_transform that reduces them to one tensor")
    return g


def _build_graph(ep: Any, wrapped: torch.nn.Module, length: int) -> _Graph:
    g = _Graph()
    g.length = length
    g.model_ref = weakref.ref(wrapped.model)
    g.transform = getattr(wrapped, "transform", None)
    fn = getattr(wrapped, "_transform_fn", None)
    if fn is not None:
        try:
            g.transform_fn_ref = weakref.ref(fn)
        except TypeError:  # e.g. a builtin: kept strongly (it cannot reference the model)
            g.transform_fn_ref = lambda fn=fn: fn
    sig = ep.graph_signature
    kinds: Dict[str, Tuple[str, str]] = {}
    for spec in sig.input_specs:
        name = spec.arg.name if hasattr(spec.arg, "name") else None
        if name is None:
            continue
        kinds[name] = (spec.kind.name, spec.target or "")
    g.placeholders = kinds
    g.constants = dict(ep.constants)
    for fx in ep.graph.nodes:
        if fx.op == "output":
            g.outputs = fx.args[0]
            continue
        n = _Node(node=fx, name=fx.name, target=fx.target)
        val = fx.meta.get("val")
        if isinstance(val, torch.Tensor):
            n.shape = tuple(int(s) if not isinstance(s, torch.SymInt) else -1 for s in val.shape)
        if fx.op == "placeholder":
            kind, _ = kinds.get(fx.name, ("USER_INPUT", ""))
            if kind == "USER_INPUT":
                if g.input is not None:
                    raise _Unsupported("the model takes more than one input")
                n.kind = _INPUT
                g.input = n
            else:
                n.kind = _CONST
        elif fx.op == "call_function":
            for a in fx.all_input_nodes:
                src = g.by_fx[a]
                n.inputs.append(src)
                src.consumers.append(n)
            deps = any(i.kind != _CONST for i in n.inputs)
            if not deps:
                n.kind = _CONST
            elif isinstance(val, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
                n.kind = _SYM  # a size computed from the batch dimension
            elif not isinstance(val, torch.Tensor):
                n.kind = _GLOBAL  # e.g. (values, indices) of max/min/sort: global, never "sym"
                n.note = "multi-output op"
            else:
                n.kind = _GLOBAL  # refined by _analyse
        else:
            raise _Unsupported(f"graph node {fx.name} of op {fx.op} is not supported")
        g.nodes.append(n)
        g.by_fx[fx] = n
    if g.input is None:
        raise _Unsupported("the model takes no tensor input")
    outs = g.outputs
    if isinstance(outs, (tuple, list)) and len(outs) == 1:
        outs = outs[0]
    if isinstance(outs, (tuple, list)):
        g.tuple_output = True
    g.outputs = outs
    return g


def _flatten_outputs(o: Any) -> List[Any]:
    if isinstance(o, (tuple, list)):
        r: List[Any] = []
        for x in o:
            r.extend(_flatten_outputs(x))
        return r
    if isinstance(o, torch.fx.Node):
        return [o]
    return []

