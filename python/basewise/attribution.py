"""Per-base attributions: ``get_attributions``, a drop-in for gReLU's.

Four methods, with gReLU 1.1.0's semantics (spec section 3):

* ``"deepshap"``: DeepLIFT/SHAP through ``tangermeme.deep_lift_shap`` with gReLU's arguments
  (``n_shuffles``, ``hypothetical``, ``random_state=seed``, ``device``, ``**kwargs``).
* ``"saliency"``: the signed gradient of the model output with respect to the one-hot input.
* ``"inputxgradient"``: one-hot input times that gradient.
* ``"integratedgradients"``: zero baseline, 50-point Gauss-Legendre rule, float64 result.

The three gradient methods run through ``captum.attr`` (``Saliency``, ``InputXGradient``,
``IntegratedGradients``) like gReLU's, but over batches of sequences instead of one sequence per
call; every sequence is attributed independently (the model is in eval mode), so the numbers are
those of the one-at-a-time loop up to float32 rounding of batched kernels (which, like any float32
rounding, can put a ReLU input on the other side of 0 and so change single gradient entries of
ReLU networks; bench_attr.py checks both against float64). Integrated gradients is accumulated in
float64 as gReLU's (captum 0.5) is: bitwise gReLU's numbers with captum 0.5; captum >= 0.6 rounds
the quadrature weights to float32, a relative difference of about 1e-9.

What basewise does better than gReLU (spec section 7):

* **DeepLIFT sees the output activation.** A gReLU ``LightningModel`` applies its activation as a
  plain function (``torch.exp`` for Poisson regression, ``torch.sigmoid`` for binary tasks) that
  DeepLIFT's module hooks never see, so gReLU treats it as linear: its attributions break the
  summation rule and tangermeme warns "Convergence deltas too high". basewise explains an
  equivalent module (network, then the activation as a module, then the transform) and gives the
  new modules the rescale rule, as it does for activation modules tangermeme has no rule for
  (enformer-pytorch's ``GELU``, gReLU's ``Activation("exp")``, ``nn.Hardswish``, subclasses of
  supported activations, ...). Attributions then sum to the output differences within
  tangermeme's threshold. On models whose activation is the identity the numbers are exactly
  those of ``tangermeme.deep_lift_shap`` on the model itself, i.e. gReLU's. (Activations called
  as functions *inside* the network, such as ``F.relu`` in a ``forward``, stay invisible to
  DeepLIFT's module hooks, as in gReLU; gReLU's refusal of its Enformer models is kept.)
* **deepshap explains sequences with N.** tangermeme (and so gReLU) stops at the first sequence
  with an N ("X must be one-hot encoded and cannot have unknown characters"), so one N run in
  10^5 peaks kills the run. basewise explains such a sequence with N as the all-zero one-hot
  column the other methods see: its references (:func:`n_references`) are dinucleotide shuffles
  of the concatenation of its known bases, put back at the known positions, so N stays an
  all-zero column at the same positions in every reference; reference k is drawn with seed
  ``seed + k``, as tangermeme does. At an N position the attribution is 0 (the hypothetical one
  is the multiplier, the reference being 0 there), and the attributions still sum to f(x) minus
  the mean f(reference). A sequence with fewer than 2 known bases (all N) gets all-zero
  attributions. Sequences without N are explained by exactly gReLU's call, so their numbers do
  not change (bit for bit) when a sequence with N is in the same batch.
* **Validation first.** ``method``, ``device``, ``batch_size``, ``n_shuffles``, ``seed``, the
  captum options and ``seqs`` are checked before any model call. An unknown method raises
  ``NotImplementedError`` (gReLU's type) whose message lists the valid names.
* **The caller's model is left as it was**: transform, training mode, device and parameters'
  ``requires_grad`` are restored on return and on exceptions (gReLU leaves the model in eval mode,
  on ``device`` for the captum methods, and drops an attached transform).
* **Quiet:** captum's "did not already require gradients" warning does not reach the user.
* **Wider use:** plain ``nn.Module`` models (the prediction transform is applied to their output;
  a (B,) or (B, T) output is read as (B, T, 1)), a 2-D one-hot tensor is one sequence, keyword-only
  ``target`` and ``batch_size``, and captum's options (``n_steps``, ``baselines``,
  ``internal_batch_size``, ...) through ``**kwargs``.

Example:
    >>> import torch
    >>> from basewise.attribution import get_attributions  # also basewise.get_attributions
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 1), torch.nn.AdaptiveAvgPool1d(1))
    >>> get_attributions(model, ["ACGT", "TTGA"], method="saliency").shape
    (2, 4, 4)
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._model import _batched_3d, eval_mode, is_lightning_like, make_forward, model_dtype, preserved_model_state
from .sequence import to_onehot

__all__ = ["get_attributions", "TargetError", "METHODS", "deepshap_rules", "default_batch_size",
           "default_internal_batch_size"]

#: The valid ``method`` names, in gReLU's order.
METHODS = ("deepshap", "saliency", "inputxgradient", "integratedgradients")
CAPTUM_METHODS = METHODS[1:]

# gReLU's warning texts, verbatim.
HYPOTHETICAL_WARNING = "hypothetical = True will be ignored as method is not deepshap."
CORRECT_GRAD_WARNING = "correct_grad = True will be ignored as method is not saliency."
ENFORMER_ERROR = "DeepShap currently cannot be applied to Enformer models."

#: Default batching of the captum methods: one captum forward/backward pass holds about this many
#: input positions (rows x length). On a CPU the work is compute-bound and what batching buys is
#: cache reuse, fewer passes over dense weights and better use of the threads. On the 2-core CPU of
#: bench_attr.py, 8 sequences of L = 1000 per pass were fastest for saliency and inputxgradient on
#: all three benchmark models (ConvModel, Basset-like, BPNet-like; 1, 2, 4, 16 and 32 were slower,
#: 32 by 1.3-2x) and 8 rows for integrated gradients' scaled copies. A GPU wants large batches.
DEFAULT_BATCH_SIZE = 64
DEFAULT_POSITIONS = {"cpu": 8_192, "gpu": 262_144}
DEFAULT_IG_POSITIONS = {"cpu": 8_192, "gpu": 262_144}
#: deepshap: tangermeme's ``batch_size`` (sequence-reference pairs per pass) when not given: the
#: same positions budget, at most this many pairs. tangermeme's own default is 32 pairs, which on
#: the CPU of bench_attr.py ran 1.5-1.7x slower than 8 pairs at L = 1000 on all three benchmark
#: models. References do not depend on it (reference k of a sequence is drawn with seed + k).
DEEPSHAP_MAX_PAIRS = 64


def default_batch_size(method: str, length: int, device: torch.device, n_steps: int = 50) -> int:
    """Sequences per captum call (deepshap: sequence-reference pairs per tangermeme batch) when
    ``batch_size`` is None.

    ``DEFAULT_POSITIONS`` input positions per call (sequences x length), for integrated gradients
    ``DEFAULT_IG_POSITIONS`` (sequences x length x ``n_steps``), between 1 and
    ``DEFAULT_BATCH_SIZE`` sequences; for deepshap ``DEFAULT_POSITIONS`` (pairs x length), between
    1 and ``DEEPSHAP_MAX_PAIRS`` pairs.

    Example:
        >>> default_batch_size("saliency", 1000, torch.device("cpu"))
        8
        >>> default_batch_size("integratedgradients", 1000, torch.device("cpu"))
        1
        >>> default_batch_size("deepshap", 1000, torch.device("cpu"))
        8
    """
    kind = "cpu" if device.type == "cpu" else "gpu"
    if method == "deepshap":  # sequence-reference pairs per tangermeme batch
        return max(1, min(DEEPSHAP_MAX_PAIRS, DEFAULT_POSITIONS[kind] // max(1, length)))
    ig = method == "integratedgradients"
    budget = (DEFAULT_IG_POSITIONS if ig else DEFAULT_POSITIONS)[kind]
    per_sequence = max(1, length) * (n_steps if ig else 1)
    return max(1, min(DEFAULT_BATCH_SIZE, budget // per_sequence))


def default_internal_batch_size(length: int, device: torch.device, batch_size: int,
                                n_steps: int = 50) -> Optional[int]:
    """captum's ``internal_batch_size`` for integrated gradients when not given: the
    ``batch_size x n_steps`` scaled inputs of one call are run in chunks of about
    ``DEFAULT_IG_POSITIONS`` positions (at least one row per sequence); None when they fit at once.

    Example:
        >>> default_internal_batch_size(1000, torch.device("cpu"), 1)  # 50 rows in chunks of 8
        8
    """
    rows = max(1, DEFAULT_IG_POSITIONS["cpu" if device.type == "cpu" else "gpu"] // max(1, length))
    if batch_size * n_steps <= rows:
        return None
    return max(batch_size, rows)


# captum's options per method (what ``**kwargs`` may hold for the gradient methods).
_CAPTUM_OPTIONS = {
    "saliency": ("abs", "additional_forward_args"),
    "inputxgradient": ("additional_forward_args",),
    # captum's ``method`` (the quadrature) cannot be passed: the name is get_attributions' own.
    "integratedgradients": ("baselines", "n_steps", "internal_batch_size", "additional_forward_args"),
}
_CAPTUM_WARNING = r"Input Tensor \d+ did not already require gradients"


# ----------------------------------------------------------------------------- validation
def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise NotImplementedError(
            f"method: {method!r} is not supported; expected one of "
            + ", ".join(repr(m) for m in METHODS)
        )
    return method


def _check_device(device: Any) -> torch.device:
    """gReLU's ``device``: a torch device string, a ``torch.device`` or a GPU index."""
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(
            f"device: expected a torch device string such as 'cpu' or 'cuda:0', a torch.device "
            f"or a GPU index, got {type(device).__name__}"
        )
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device: a GPU index must be non-negative, got {device}")
        dev = torch.device("cuda", device)
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"device: {device!r} is not a valid torch device ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asks for CUDA, but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: GPU index {dev.index} is out of range "
                f"({torch.cuda.device_count()} CUDA device(s) visible)"
            )
    return dev


def _check_positive_int(value: Any, name: str, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> Optional[int]:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed: expected an int or None (tangermeme seeds reference k with seed + k), "
            f"got {type(seed).__name__}"
        )
    return int(seed)


def _check_captum_kwargs(method: str, kwargs: Dict[str, Any]) -> None:
    allowed = _CAPTUM_OPTIONS[method]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"get_attributions: unexpected keyword argument(s) {unknown} for method {method!r}; "
            f"its captum options are {list(allowed)} (plus basewise's batch_size and target). "
            "Other keyword arguments are for tangermeme.deep_lift_shap (method='deepshap')."
        )
    if method == "integratedgradients" and "n_steps" in kwargs:
        _check_positive_int(kwargs["n_steps"], "n_steps", allow_none=False)


def _is_enformer(network: Any) -> bool:
    names = {cls.__name__ for cls in type(network).__mro__}
    return bool(names & {"EnformerModel", "EnformerPretrainedModel"})


# ----------------------------------------------------------------------------- captum methods
def _squeezed_forward(forward: Callable, target: Any) -> Callable:
    """The function captum explains: ``forward`` with gReLU's trailing length-1 axis dropped.

    A (B, T, 1) output becomes (B, T), so an int ``target`` picks a task as in deepshap. Without
    a target every example must give exactly one number (captum's requirement), checked here with
    a clear error instead of captum's bare assertion.
    """

    def f(x: torch.Tensor, *args) -> torch.Tensor:
        y = forward(x, *args)  # (B, T, L_out)
        if y.ndim > 2 and y.shape[2:].numel() == 1:
            y = y.reshape(y.shape[0], y.shape[1])  # (B, T)
        if target is None and y.ndim > 1 and y.shape[1:].numel() != 1:
            raise TargetError(
                f"get_attributions: the model output has {y.shape[1:].numel()} values per "
                f"sequence (shape {tuple(y.shape[1:])} after the prediction transform), but "
                f"method 'saliency', 'inputxgradient' and 'integratedgradients' explain one number "
                "per sequence. Pass a prediction_transform that reduces the output to one value "
                "(e.g. gReLU's Aggregate(tasks=[k], length_aggfunc='sum')), or the keyword-only "
                "target to pick one output (an int for a task, a tuple (task, bin) for a "
                "(B, T, L_out) output)."
            )
        return y

    return f


def _float64_integrated_gradients(forward: Callable):
    """captum's ``IntegratedGradients`` accumulating float32 gradients in float64.

    captum 0.5 (gReLU's pin) multiplies the float32 gradients by float64 Gauss-Legendre weights,
    so gReLU's result is float64. captum >= 0.6 rounds the weights to float32 and returns float32.
    Handing captum float64 gradients keeps the sum and the result in float64 with any captum
    version: bitwise gReLU's numbers with captum 0.5; with captum 0.9 they differ from them only by
    the float32 rounding of the weights (relative 6e-8 per weight, far below float32 precision).
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(forward)
    gradients = ig.gradient_func

    def float64_gradients(*args, **kwargs):
        return tuple(g.to(torch.float64) for g in gradients(*args, **kwargs))

    ig.gradient_func = float64_gradients
    return ig


def _per_batch(value: Any, n: int, sl: slice, device: torch.device, dtype: torch.dtype):
    """Slice a per-example tensor (first axis of length ``n``) to the batch; others as they are."""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if value.ndim > 0 and value.shape[0] == n and n > 1:
            value = value[sl]
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, tuple):
        return tuple(_per_batch(v, n, sl, device, dtype) for v in value)
    if isinstance(value, list) and len(value) == n and n > 1:
        return value[sl]
    return value


def _captum_attributions(method: str, forward: Callable, x: torch.Tensor, device: torch.device,
                         dtype: torch.dtype, batch_size: int, target: Any,
                         options: Dict[str, Any]) -> torch.Tensor:
    """Batched captum attributions of ``x`` (B, 4, L), on the CPU, (B, 4, L)."""
    from captum.attr import InputXGradient, Saliency

    f = _squeezed_forward(forward, target)
    if method == "saliency":
        explainer = Saliency(f)
        options = {"abs": False, **options}  # gReLU's saliency is the signed gradient
    elif method == "inputxgradient":
        explainer = InputXGradient(f)
    else:
        explainer = _float64_integrated_gradients(f)

    n = x.shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        xb = x[sl].to(device=device, dtype=dtype, copy=True).requires_grad_()  # (b, 4, L)
        kw = {k: (_per_batch(v, n, sl, device, dtype) if k in ("baselines", "additional_forward_args")
                  else v) for k, v in options.items()}
        tb = _per_batch(target, n, sl, device, dtype)
        attr = explainer.attribute(xb, target=tb, **kw)  # (b, 4, L)
        chunks.append(attr.detach().to("cpu"))
    return torch.cat(chunks)  # (B, 4, L)


# ----------------------------------------------------------------------------- deepshap
class Exp(nn.Module):
    """``torch.exp`` as a module, so DeepLIFT can give gReLU's Poisson activation its rule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class _Function(nn.Module):
    """A plain callable as a module (no DeepLIFT rule: treated as linear, like gReLU does)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _function_module(fn: Callable) -> Optional[nn.Module]:
    """An elementwise activation function as an ``nn.Module`` tangermeme has a rule for."""
    table = {
        torch.exp: Exp,
        torch.sigmoid: nn.Sigmoid,
        F.sigmoid: nn.Sigmoid,
        torch.special.expit: nn.Sigmoid,
        torch.tanh: nn.Tanh,
        F.tanh: nn.Tanh,
        torch.relu: nn.ReLU,
        F.relu: nn.ReLU,
        F.softplus: nn.Softplus,
        F.gelu: nn.GELU,
        F.silu: nn.SiLU,
        F.elu: nn.ELU,
        F.mish: nn.Mish,
        F.logsigmoid: nn.LogSigmoid,
    }
    for f, cls in table.items():
        if fn is f:
            return cls()
    return None


def _as_module(fn: Any) -> nn.Module:
    if fn is None:
        return nn.Identity()
    if isinstance(fn, nn.Module):
        return fn
    return _function_module(fn) or _Function(fn)


def _transform_module(transform: Optional[Callable]) -> Optional[nn.Module]:
    """A prediction transform a LightningModel can hold: a plain callable (a lambda) becomes a
    module, since ``LightningModel.transform`` is a registered child module (gReLU fails there)."""
    if transform is None or isinstance(transform, nn.Module):
        return transform
    return _Function(transform)


class _ExplainedLightningModel(nn.Module):
    """A gReLU LightningModel's forward (network -> activation -> transform) with every part a
    module, so that DeepLIFT's hooks see the activation. Shares the caller's modules."""

    def __init__(self, network: nn.Module, activation: Any, transform: Any) -> None:
        super().__init__()
        self.network = network
        self.activation = _as_module(activation)
        self.transform = _as_module(transform)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        y = self.network(x, *args) if args else self.network(x)  # (B, T, L_out)
        return self.transform(self.activation(y))


class _ExplainedModule(nn.Module):
    """A plain model with its prediction transform, output shaped (B, T, L_out)."""

    def __init__(self, model: Any, transform: Any) -> None:
        super().__init__()
        self.model = model if isinstance(model, nn.Module) else _Function(model)
        self.transform = None if transform is None else _as_module(transform)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        y = self.model(x, *args) if args else self.model(x)
        if self.transform is not None:
            y = self.transform(y)
        return _batched_3d(y, x)  # (B,) -> (B, 1, 1), (B, T) -> (B, T, 1)


class TargetError(ValueError, AssertionError):
    """A multi-output model explained without a ``target`` (or a target that does not fit): a
    ``ValueError`` that is also the ``AssertionError`` captum raised under gReLU."""


def _tangermeme_rules() -> Dict[type, Callable]:
    """tangermeme's built-in rule table (module type -> rule)."""
    try:
        from tangermeme._deep_lift_utils import _build_nonlinear_ops

        return dict(_build_nonlinear_ops(None))
    except ImportError:  # pragma: no cover - older tangermeme: the documented elementwise rules
        from tangermeme.deep_lift_shap import _nonlinear

        return {t: _nonlinear for t in (nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU,
                                        nn.SiLU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.Sigmoid,
                                        nn.Tanh, nn.Softplus, nn.Softshrink, nn.LogSigmoid,
                                        nn.PReLU)}


# torch's elementwise activation modules that tangermeme 1.6 has no rule for.
_TORCH_ELEMENTWISE = (nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink,
                      nn.Threshold, nn.Hardshrink)
# Class names (lower case) of elementwise activations in other packages, e.g. enformer-pytorch's
# GELU (x * sigmoid(1.702 x)), and basewise's Exp.
_ELEMENTWISE_NAMES = {
    "exp", "gelu", "quickgelu", "gelutanh", "newgelu", "fastgelu", "approximategelu",
    "sigmoid", "tanh", "softplus", "silu", "swish", "mish", "relu", "elu", "selu", "celu",
    "leakyrelu", "relu6", "hardswish", "hardsigmoid", "softsign", "logsigmoid", "squaredrelu",
}
# Attributes in which wrapper modules (gReLU's ``Activation``: ``self.layer = torch.exp``) hold
# their activation.
_WRAPPER_ATTRIBUTES = ("layer", "func", "fn", "f", "act", "activation")


def deepshap_rules(model: nn.Module) -> Dict[type, Callable]:
    """DeepLIFT rules for the model's modules that tangermeme's table lacks.

    Returned as a dict for ``deep_lift_shap(..., additional_nonlinear_ops=...)``:

    * subclasses of a supported module type get their parent's rule (tangermeme hooks them but
      looks their rule up by exact type, which fails with a ``KeyError``);
    * torch's elementwise activation modules tangermeme lacks (``nn.Hardswish``, ...) and leaf
      modules named like an elementwise activation (enformer-pytorch's ``GELU``, :class:`Exp`)
      get the rescale rule;
    * modules that only wrap an elementwise activation function or module in an attribute
      (gReLU's ``Activation``, whose ``layer`` is ``torch.exp`` for "exp") get the rescale rule,
      provided every module of that type in the model does.

    The rescale rule (``tangermeme.deep_lift_shap._nonlinear``) is exact for any elementwise op.

    Example:
        >>> from tangermeme.deep_lift_shap import _nonlinear
        >>> deepshap_rules(torch.nn.Sequential(torch.nn.Conv1d(4, 1, 1), Exp())) == {Exp: _nonlinear}
        True
    """
    from tangermeme.deep_lift_shap import _nonlinear

    table = _tangermeme_rules()
    elementwise_types = tuple(t for t, rule in table.items() if rule is _nonlinear)

    def elementwise(obj: Any) -> bool:
        if isinstance(obj, nn.Module):
            t = type(obj)
            if isinstance(obj, nn.Identity) or isinstance(obj, elementwise_types + _TORCH_ELEMENTWISE):
                return True
            return not any(True for _ in obj.children()) and t.__name__.lower() in _ELEMENTWISE_NAMES
        return callable(obj) and _function_module(obj) is not None

    def wraps_elementwise(m: nn.Module) -> bool:
        held = [getattr(m, a) for a in _WRAPPER_ATTRIBUTES if a in m.__dict__ or a in m._modules]
        children = list(m.children())
        if len(held) != 1 or not elementwise(held[0]):
            return False
        return all(c is held[0] for c in children)  # nothing else inside

    rules: Dict[type, Callable] = {}
    provisional = set()
    for m in model.modules():
        t = type(m)
        if t in table or t in rules:
            continue
        parent = next((b for b in t.__mro__[1:] if b in table), None)
        if parent is not None:
            rules[t] = table[parent]
        elif isinstance(m, _TORCH_ELEMENTWISE) or (
            not any(True for _ in m.children()) and t.__name__.lower() in _ELEMENTWISE_NAMES
        ):
            rules[t] = _nonlinear
        elif any(a in m.__dict__ or a in m._modules for a in _WRAPPER_ATTRIBUTES):
            provisional.add(t)
            rules[t] = _nonlinear
    for t in provisional:  # a wrapper type gets the rule only if all its instances are elementwise
        if not all(wraps_elementwise(m) for m in model.modules() if type(m) is t):
            del rules[t]
    return rules


def _explained_model(model: Any, prediction_transform: Optional[Callable]) -> Tuple[nn.Module, bool]:
    """The module deepshap explains, and whether the caller's transform must be attached.

    gReLU LightningModel-like objects with ``model``/``activation``/``transform`` become an
    :class:`_ExplainedLightningModel` (the transform is ``prediction_transform`` if given, else the
    model's current one, as ``add_transform`` would make it); other LightningModel-like objects
    (ensembles) are explained as they are after ``add_transform`` (gReLU's way); plain models are
    wrapped with their transform.
    """
    if is_lightning_like(model):
        network = getattr(model, "model", None)
        if isinstance(network, nn.Module) and hasattr(model, "activation") and hasattr(model, "transform"):
            transform = prediction_transform if prediction_transform is not None else model.transform
            return _ExplainedLightningModel(network, model.activation, transform), False
        return model, True
    return _ExplainedModule(model, prediction_transform), False


def _n_sequences(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the sequences of ``x`` (B, 4, L) that are one-hot with N (all-zero columns).

    Values all 0 or 1, at most one 1 per column, at least one all-zero column. Other sequences
    (N-free ones, and tensors that are not one-hot at all) go to tangermeme as they are.
    """
    colsum = x.sum(dim=1)  # (B, L)
    binary = ((x == 0) | (x == 1)).flatten(1).all(dim=1)
    return binary & (colsum <= 1).all(dim=1) & (colsum == 0).any(dim=1)


def n_references(x: torch.Tensor, n_shuffles: int, seed: Optional[int]) -> torch.Tensor:
    """deepshap references for one-hot sequences with N: (B, n_shuffles, 4, L), dtype of ``x``.

    The known bases of each sequence (its one-hot columns, read left to right with the N
    positions skipped) are concatenated and dinucleotide-shuffled with
    ``tangermeme.ersatz.dinucleotide_shuffle`` (first and last known base kept, dinucleotide
    counts of the concatenation kept), and put back at the known positions; every N position
    stays an all-zero column, in every reference. Reference ``k`` is drawn with seed
    ``seed + k`` (tangermeme's seeding in ``deep_lift_shap``), whatever the other sequences and
    ``batch_size``; ``seed=None`` draws fresh references. A sequence without N gets exactly the
    references ``deep_lift_shap(..., random_state=seed)`` draws for it. A sequence with fewer
    than 2 known bases (nothing to shuffle) gets copies of itself.

    Example:
        >>> from basewise.sequence import to_onehot
        >>> r = n_references(to_onehot("ACGNNTTACG"), 3, seed=0)
        >>> r.shape, bool((r[0, :, :, 3:5] == 0).all())
        (torch.Size([1, 3, 4, 10]), True)
    """
    from tangermeme.ersatz import dinucleotide_shuffle

    refs = torch.zeros((x.shape[0], n_shuffles) + tuple(x.shape[1:]), dtype=x.dtype)
    for i in range(x.shape[0]):
        known = x[i].sum(dim=0) > 0  # (L,)
        if int(known.sum()) < 2:
            refs[i] = x[i]
            continue
        xk = x[i][:, known]  # (4, K)
        states = None if seed is None else [seed + k for k in range(n_shuffles)]
        shuffled = dinucleotide_shuffle(xk.unsqueeze(0).expand(n_shuffles, -1, -1).contiguous(),
                                        n=1, random_state=states)[:, 0]  # (n_shuffles, 4, K)
        refs[i][:, :, known] = shuffled.to(x.dtype)
    return refs


def _rows(value: Any, idx: torch.Tensor, n: int) -> Any:
    """The rows ``idx`` of a per-sequence tensor (first axis ``n``), PackedSequence or tuple of
    them (tangermeme's ``references`` and ``args``); anything else as it is."""
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, idx, n) for v in value)
    if _is_tensor_like(value) and value.ndim > 0 and value.shape[0] == n:
        return value[idx]
    return value


def _is_tensor_like(value: Any) -> bool:
    """A tensor or a tangermeme ``PackedSequence`` (indexable along its batch axes)."""
    return isinstance(value, torch.Tensor) or type(value).__name__ == "PackedSequence"


def _deepshap(model: Any, prediction_transform: Optional[Callable], x: torch.Tensor,
              device: torch.device, n_shuffles: int, hypothetical: bool, seed: Optional[int],
              target: Any, batch_size: Optional[int], kwargs: Dict[str, Any]) -> np.ndarray:
    """deepshap through ``tangermeme.deep_lift_shap``.

    Sequences without N take exactly gReLU's call (default references, ``random_state=seed``).
    Sequences with N (all-zero columns) are explained in a second call, with the references of
    :func:`n_references` (or the caller's ``references``) and tangermeme's one-hot check of X
    relaxed (``only_warn``, its warning silenced; the convergence-delta warnings stay);
    with basewise's references, those with fewer than 2 known bases get zeros without a model
    call. Results are put back in input order.
    """
    from tangermeme.deep_lift_shap import deep_lift_shap

    explained, attach = _explained_model(model, prediction_transform)
    if attach:
        model.add_transform(_transform_module(prediction_transform))
    eval_mode(explained)
    rules = deepshap_rules(explained)
    user_rules = kwargs.pop("additional_nonlinear_ops", None)
    if user_rules:
        rules.update(user_rules)
    if rules:
        kwargs["additional_nonlinear_ops"] = rules
    if target is not None:
        kwargs["target"] = target
    if batch_size is not None:
        kwargs["batch_size"] = batch_size

    has_n = _n_sequences(x)
    if not bool(has_n.any()):  # gReLU's call, unchanged
        attr = deep_lift_shap(explained, X=x, n_shuffles=n_shuffles, hypothetical=hypothetical,
                              device=device, random_state=seed, **kwargs)  # (B, 4, L)
        return _deepshap_numpy(attr)

    n = x.shape[0]
    user_references = kwargs.pop("references", None)
    args = kwargs.pop("args", None)
    parts = []  # (row indices, attributions)
    free = torch.nonzero(~has_n).flatten()
    if len(free):
        attr = deep_lift_shap(explained, X=x[free], n_shuffles=n_shuffles,
                              hypothetical=hypothetical, device=device, random_state=seed,
                              **_group_kwargs(kwargs, user_references, args, free, n))
        parts.append((free, attr.detach().cpu()))
    with_n = torch.nonzero(has_n).flatten()
    if user_references is None:  # fewer than 2 known bases: nothing to shuffle, zeros
        with_n = with_n[x[with_n].sum(dim=(1, 2)) >= 2]
    if len(with_n):
        from tangermeme.utils import _validate_input

        group = _group_kwargs(kwargs, user_references, args, with_n, n)
        if user_references is None:
            group["references"] = n_references(x[with_n], n_shuffles, seed)
        elif _is_tensor_like(group["references"]):
            # only_warn below would turn a bad references tensor into a warning: check it first
            _validate_input(group["references"], "references",
                            shape=(len(with_n), -1) + tuple(x.shape[1:]), ohe=True, allow_N=True,
                            ohe_dim=-2)
        group["only_warn"] = True  # X's all-zero columns: tangermeme's check would raise
        try:
            from tangermeme.utils import TangermemeWarning
        except ImportError:  # pragma: no cover - older tangermeme warns with a UserWarning
            TangermemeWarning = UserWarning
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_N_WARNING, category=TangermemeWarning)
            attr = deep_lift_shap(explained, X=x[with_n], n_shuffles=n_shuffles,
                                  hypothetical=hypothetical, device=device, random_state=seed,
                                  **group)
        parts.append((with_n, attr.detach().cpu()))
    if parts:
        tail, dtype = tuple(parts[0][1].shape[1:]), parts[0][1].dtype
    else:  # every sequence is degenerate: no model call
        dtype = kwargs.get("dtype")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or model_dtype(explained)
        tail = ((n_shuffles,) if kwargs.get("raw_outputs") else ()) + tuple(x.shape[1:])
    out = torch.zeros((n,) + tail, dtype=dtype)  # degenerate sequences stay 0
    for rows, attr in parts:
        out[rows] = attr
    return _deepshap_numpy(out)


# tangermeme's one-hot check of X, a warning under only_warn (sequences with N).
_N_WARNING = r"X must be one-hot encoded and cannot have unknown characters"


def _group_kwargs(kwargs: Dict[str, Any], references: Any, args: Any, rows: torch.Tensor,
                  n: int) -> Dict[str, Any]:
    """deep_lift_shap's keyword arguments for the sequences ``rows`` of ``n``."""
    group = dict(kwargs)
    if references is not None:
        group["references"] = _rows(references, rows, n)
    if args is not None:
        group["args"] = _rows(args, rows, n)
    return group


def _deepshap_numpy(attr: torch.Tensor) -> np.ndarray:
    attr = attr.detach().cpu()
    if attr.dtype in (torch.float16, torch.bfloat16):
        attr = attr.float()
    return attr.numpy()


# ----------------------------------------------------------------------------- public
def get_attributions(
    model: Any,
    seqs: Any,
    genome: Optional[str] = None,
    prediction_transform: Optional[Callable] = None,
    device: Union[str, int, torch.device] = "cpu",
    method: str = "deepshap",
    correct_grad: bool = False,
    hypothetical: bool = False,
    n_shuffles: int = 20,
    seed: Optional[int] = None,
    *,
    batch_size: Optional[int] = None,
    target: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Per-base attribution scores, (B, 4, L): a drop-in for gReLU's ``get_attributions``.

    The explained function is the model's prediction after ``prediction_transform``: for a gReLU
    ``LightningModel`` (or look-alike) network -> activation -> transform, for a plain module
    ``prediction_transform(model(x))``.

    Args:
        model: a gReLU ``LightningModel``-like object (``add_transform``/``reset_transform``) or
            any ``nn.Module`` mapping one-hot (B, 4, L) to (B, T, L_out), (B, T) or (B,).
        seqs: sequences in any form ``ISM_predict`` takes: a string or list of strings, an
            integer index array (L,) or (B, L), a one-hot tensor or array (4, L) or (B, 4, L)
            (values used as given; a 2-D one is one sequence), or a DataFrame of intervals with
            ``genome``. N is an all-zero column, for every method: deepshap explains a sequence
            with N against references that keep its N positions (see below); gReLU raises.
        genome: FASTA path, open ``pyfaidx.Fasta`` or genomepy name, for intervals. Default None.
        prediction_transform: module or callable applied to the model output (gReLU's
            ``Aggregate``, ``Specificity``, ...). Default None.
        device: where to compute: a torch device string ("cpu", "cuda:1"), a ``torch.device`` or
            a GPU index. The model is moved back to its own device afterwards. Default "cpu".
        method: "deepshap", "saliency", "inputxgradient" or "integratedgradients"; anything
            else raises ``NotImplementedError`` before any work. Default "deepshap".
        correct_grad: saliency only: subtract each position's mean over the 4 channels
            (Majdandzic et al. 2023). With another method: gReLU's ``UserWarning``, then ignored.
            Default False.
        hypothetical: deepshap only: return the hypothetical contributions of all 4 bases (for
            TF-MoDISco) instead of only the observed base's (which is one-hot x hypothetical).
            With another method: gReLU's ``UserWarning``, then ignored. Default False.
        n_shuffles: deepshap: dinucleotide-shuffled references per sequence. Default 20.
        seed: deepshap: reference k of every sequence is shuffled with seed ``seed + k``, so a
            fixed seed makes the result deterministic; None draws fresh references. Default None.

            **N with deepshap** (gReLU raises tangermeme's "X must be one-hot encoded and
            cannot have unknown characters"): a sequence with N (all-zero columns) is explained
            with N as an all-zero column. Its ``n_shuffles`` references are built by
            :func:`n_references`: the sequence's known bases, concatenated in order with the N
            positions skipped, are dinucleotide-shuffled by tangermeme's
            ``dinucleotide_shuffle`` (reference k with seed ``seed + k``) and put back at the
            known positions, so every reference is an all-zero column wherever the sequence has
            N. They go to ``tangermeme.deep_lift_shap`` as ``references=`` in a separate call
            for the sequences with N (its one-hot check of X relaxed for them only; the
            convergence-delta warnings are kept). Consequences: at an N position the attribution
            is 0 and the hypothetical attribution of base b is the multiplier of b (the reference
            is 0 there); the attributions of a sequence still sum to f(x) - mean_k f(ref_k).
            A sequence with N and fewer than 2 known bases (all N, say) has nothing to shuffle
            and gets all-zero attributions, without a model call. Sequences without N are
            explained by the same call as before (gReLU's), so their attributions are
            bit-identical whether or not sequences with N are in the batch. With your own
            ``references`` (in ``**kwargs``), those are used for every sequence instead.
        batch_size: keyword-only. Captum methods: sequences per captum call; None picks
            :func:`default_batch_size` (about 8k input positions per pass on a CPU, 262k on a
            GPU, at most 64 sequences; for integrated gradients 8k positions on a CPU, a
            sequence counting ``n_steps`` times, and its scaled copies run in chunks of that
            size through captum's ``internal_batch_size`` unless given: on a CPU at L = 1000,
            8 sequences per call for saliency, 1 sequence in chunks of 8 rows for integrated
            gradients). Deepshap: tangermeme's ``batch_size`` (sequence-reference pairs); None
            picks :func:`default_batch_size` (about 8k positions per pass on a CPU, i.e. 8 pairs
            at L = 1000, at most 64; gReLU uses tangermeme's default of 32, 1.5x slower on a CPU).
            The result does not depend on it beyond float rounding.
            Default None.
        target: keyword-only. Which output to explain. Captum methods: passed to captum after a
            trailing length-1 axis is dropped ((B, T, 1) -> (B, T)): an int picks a task, a tuple
            (task, bin) an element of a (B, T, L_out) output, a list or tensor one per sequence.
            None (default) requires one number per sequence. Deepshap: tangermeme's ``target``
            (index on axis 1; None for its default 0). Default None.
        **kwargs: deepshap: passed to ``tangermeme.deep_lift_shap`` (``references``,
            ``warning_threshold``, ``additional_nonlinear_ops`` (merged with, and overriding,
            basewise's rules), ``raw_outputs``, ``print_convergence_deltas``, ``dtype``, ``args``,
            ...). Captum methods: captum's options: saliency ``abs`` (default False, the signed
            gradient) and ``additional_forward_args``; inputxgradient ``additional_forward_args``;
            integrated gradients ``n_steps`` (50), ``baselines`` (0), ``internal_batch_size``,
            ``additional_forward_args`` (the quadrature is always captum's default,
            Gauss-Legendre: captum's ``method`` name is taken by ``method``). Per-sequence tensors (first
            axis of length B) are sliced to each batch. Anything else raises ``TypeError``.

    Returns:
        np.ndarray (B, 4, L): float32 (the model's dtype if it computes in float64), except
        integrated gradients, float64 as in gReLU. With deepshap's ``raw_outputs=True``, the
        per-reference multipliers (B, n_shuffles, 4, L).

    Raises:
        NotImplementedError: unknown ``method``; deepshap on gReLU's Enformer models (gReLU's
            message).
        ValueError: bad ``seqs`` (gReLU's messages), ``device``, ``batch_size``, ``n_shuffles``,
            no sequences; a model output with more than one number per sequence and no
            ``target`` (captum methods); deepshap on values that are not one-hot (tangermeme's
            message).
        TypeError: bad ``seed`` or unknown captum options.

    Example:
        >>> import torch
        >>> from basewise.attribution import get_attributions
        >>> conv = torch.nn.Conv1d(4, 1, 1, bias=False)
        >>> _ = conv.weight.data.copy_(torch.tensor([4.0, -2.0, 0.0, 0.0]).view(1, 4, 1))
        >>> f = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool1d(1))  # mean of w[base]
        >>> get_attributions(f, "AC", method="saliency")[0].tolist()
        [[2.0, 2.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]]
        >>> get_attributions(f, "AC", method="integratedgradients").dtype
        dtype('float64')
    """
    # ---- validation, before any model call
    method = _check_method(method)
    dev = _check_device(device)
    batch_size = _check_positive_int(batch_size, "batch_size")
    if method == "deepshap":
        n_shuffles = _check_positive_int(n_shuffles, "n_shuffles", allow_none=False)
        seed = _check_seed(seed)
        if "return_references" in kwargs and kwargs["return_references"]:
            raise ValueError(
                "return_references: not supported by get_attributions (it returns one array); "
                "call tangermeme.deep_lift_shap directly to get the references"
            )
        if is_lightning_like(model) and _is_enformer(getattr(model, "model", None)):
            raise NotImplementedError(ENFORMER_ERROR)
    else:
        _check_captum_kwargs(method, kwargs)
    if not (isinstance(model, nn.Module) or callable(model)):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    x = to_onehot(seqs, genome=genome)  # (B, 4, L) float32, CPU
    if x.shape[0] == 0:
        raise ValueError("seqs: no sequences given")

    if hypothetical and method != "deepshap":
        warnings.warn(HYPOTHETICAL_WARNING, stacklevel=2)

    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        if method == "deepshap":
            if batch_size is None:
                batch_size = default_batch_size("deepshap", x.shape[-1], dev)
            attributions = _deepshap(model, prediction_transform, x, dev, n_shuffles,
                                     hypothetical, seed, target, batch_size, dict(kwargs))
        else:
            if is_lightning_like(model):
                model.add_transform(_transform_module(prediction_transform))
            if isinstance(model, nn.Module):
                eval_mode(model)
                model.to(dev)
                for p in model.parameters():  # gradients are needed for the input only
                    p.requires_grad_(False)
            dtype = model_dtype(model)
            options = dict(kwargs)
            if batch_size is None:
                batch_size = default_batch_size(method, x.shape[-1], dev, options.get("n_steps", 50))
            if method == "integratedgradients" and options.get("internal_batch_size") is None:
                options["internal_batch_size"] = default_internal_batch_size(
                    x.shape[-1], dev, batch_size, options.get("n_steps", 50))
            forward = make_forward(model, prediction_transform)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_CAPTUM_WARNING, category=UserWarning)
                attr = _captum_attributions(method, forward, x, dev, dtype, batch_size, target,
                                            options)  # (B, 4, L)
            if method == "integratedgradients":
                attr = attr.to(torch.float64)
            elif attr.dtype != torch.float64:
                attr = attr.to(torch.float32)
            attributions = attr.numpy()

    if correct_grad:
        if method == "saliency":
            attributions = attributions - attributions.mean(axis=1, keepdims=True)
        else:
            warnings.warn(CORRECT_GRAD_WARNING, stacklevel=2)
    return attributions
