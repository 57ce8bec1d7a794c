"""Attention maps from any transformer, captured with hooks during one forward pass.

:func:`get_attention_scores` is a drop-in replacement for gReLU 1.1.0's
``grelu.interpret.score.get_attention_scores`` (same signature, shapes and numbers) that also
works for models gReLU cannot handle. Instead of re-implementing each architecture, it finds the
attention modules of the model, hooks them, runs the model's own forward once, and stops the
forward as soon as the last requested block has produced its attention probabilities.

Supported attention modules ("blocks"), found in module-registration order
(``model.named_modules()``):

* **gReLU's attention** (``grelu.model.layers.Attention`` and anything else with a
  ``get_attn_scores`` method): the scores are ``module.get_attn_scores(x)`` on the module's input
  x. In a gReLU transformer block the attention's input is the block's normalised input, so this
  is exactly gReLU's ``block.mha.get_attn_scores(block.norm(h))``.
* **torch.nn.MultiheadAttention**, also inside ``nn.TransformerEncoderLayer`` /
  ``nn.TransformerDecoderLayer`` (which call it with ``need_weights=False``): its call is
  repeated with ``need_weights=True, average_attn_weights=False`` on the same inputs and masks,
  which gives torch's own per-head weights (attn_mask, key_padding_mask, causal masks,
  ``batch_first``, separate ``kdim``/``vdim`` projections all respected). torch's transformer
  fast paths (the fused encoder layer, and ``nn.TransformerEncoder``'s conversion of padded
  batches to nested tensors) bypass or change the attention call, so they are switched off with
  ``torch.backends.mha.set_fastpath_enabled(False)`` for the duration of the call and the previous
  setting is restored afterwards (the results are the same up to float rounding).
* **enformer-pytorch's Attention** (recognised by duck typing: class name ``Attention`` with
  ``to_q``, ``to_k``, ``to_rel_k``, ``rel_content_bias``, ``rel_pos_bias`` and ``attn_dropout``;
  enformer-pytorch is never imported): the probabilities are the input of its ``attn_dropout``,
  i.e. softmax(content + relative-position logits), taken directly.
* **Fused attention kernels**, which never materialise the probabilities:
  ``torch.nn.functional.scaled_dot_product_attention`` (torch's flash / memory-efficient / math
  kernels) and the ``flash_attn`` package's ``flash_attn_func``, ``flash_attn_qkvpacked_func`` and
  ``flash_attn_kvpacked_func``. A block is a module whose class (the one defining its
  ``forward``, torch's own excluded) mentions one of these names in its source. During the
  forward each kernel is replaced by a wrapper (in its home module, in ``flash_attn``'s
  re-exports, and under any alias in the block's defining module; reference-counted across
  threads, restored in a ``finally``; it records only for the calling thread) that takes q, k and
  the call's masking arguments and recomputes the probabilities in float32:
  softmax(q k^T * scale + attn_mask) with ``is_causal``/``enable_gqa`` for SDPA
  (:func:`sdpa_probabilities`), and flash-attn 2's documented softmax_scale, causal,
  window_size, softcap and alibi_slopes semantics, bottom-right aligned
  (:func:`flash_probabilities`). The first kernel call inside each such module is its block.
  flash-attn's variable-length (``*_varlen_*``) and kv-cache functions are not captured.

A module nested inside another found module is counted once (the inner one); a module called
several times in one forward contributes its first call.

Deliberate differences from gReLU 1.1.0 (spec section 7): the model runs in eval mode, under
``torch.no_grad``, on the model's own device (the input is moved there and cast to the model's
floating dtype), and every submodule's training flag is restored afterwards, also on error; an
out-of-range ``block_idx`` raises before any computation; a model without attention raises
:class:`AttentionNotFoundError` (an ``AttributeError``, as gReLU raised, and a ``ValueError``).
Only the conv tower and the transformer blocks are run for gReLU models, as in gReLU: the forward
is stopped before the head.

Example:
    >>> import torch
    >>> from basewise.attention import list_attention_blocks
    >>> layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    >>> list_attention_blocks(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    [('layers.0.self_attn', 'mha'), ('layers.1.self_attn', 'mha')]
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ._model import eval_mode, model_device, model_dtype, preserved_model_state
from .sequence import to_onehot

__all__ = [
    "get_attention_scores",
    "list_attention_blocks",
    "AttentionNotFoundError",
    "sdpa_probabilities",
    "flash_probabilities",
]

SEARCHED = (
    "torch.nn.MultiheadAttention (also inside nn.TransformerEncoderLayer)",
    "modules with a get_attn_scores method (gReLU's attention)",
    "enformer-pytorch Attention modules",
    "modules whose class calls torch.nn.functional.scaled_dot_product_attention",
    "modules whose class calls flash_attn_func / flash_attn_qkvpacked_func / flash_attn_kvpacked_func",
)


class AttentionNotFoundError(AttributeError, ValueError):
    """The model has no attention module that basewise can hook.

    An ``AttributeError`` (what gReLU raises for models without ``transformer_tower``) and a
    ``ValueError``.
    """


class _StopForward(BaseException):
    """Raised from a hook once every requested block is captured; caught by the caller.

    A ``BaseException`` so that ``except Exception`` in user forward code does not swallow it.
    """


# --------------------------------------------------------------------------------------------
# Finding attention modules
# --------------------------------------------------------------------------------------------

_ENFORMER_ATTRS = ("to_q", "to_k", "to_rel_k", "rel_content_bias", "rel_pos_bias", "attn_dropout")


def _is_enformer_attention(m: nn.Module) -> bool:
    return (
        type(m).__name__ == "Attention"
        and all(hasattr(m, a) for a in _ENFORMER_ATTRS)
        and isinstance(getattr(m, "attn_dropout"), nn.Module)
    )


_FLASH_NAMES = ("flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func")


@functools.lru_cache(maxsize=None)
def _fused_kind(cls: type) -> Optional[str]:
    """``"sdpa"`` / ``"flash"`` if the class defining cls.forward calls a fused attention kernel.

    Only the class owning ``forward`` is read (all of it, so helper methods count), never torch's
    own classes nor unrelated base classes (a framework base class may mention SDPA without the
    module computing attention itself).
    """
    owner = next((k for k in cls.__mro__ if "forward" in vars(k)), None)
    if owner is None or (getattr(owner, "__module__", "") or "").split(".")[0] == "torch":
        return None
    try:
        src = inspect.getsource(owner)
    except (OSError, TypeError):
        return None
    if "scaled_dot_product_attention" in src:
        return "sdpa"
    if any(name in src for name in _FLASH_NAMES):
        return "flash"
    return None


def _kind(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    if callable(getattr(m, "get_attn_scores", None)):
        return "scores"
    if _is_enformer_attention(m):
        return "enformer"
    return _fused_kind(type(m))


def _find_blocks(model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    found = [(name, m, k) for name, m in model.named_modules() for k in [_kind(m)] if k is not None]
    # Keep the innermost: drop a module that contains another found module.
    inner = []
    for name, m, kind in found:
        others = {id(o) for _, o, _ in found if o is not m}
        if any(id(sub) in others for sub in m.modules()):
            continue
        inner.append((name, m, kind))
    return inner


def list_attention_blocks(model: nn.Module) -> List[Tuple[str, str]]:
    """The attention blocks :func:`get_attention_scores` indexes, in order.

    Args:
        model: a ``torch.nn.Module`` (a gReLU LightningModel, a plain transformer, ...).

    Returns:
        A list of ``(module name, kind)``, kind one of ``"scores"`` (gReLU ``get_attn_scores``),
        ``"mha"`` (``nn.MultiheadAttention``), ``"enformer"`` (enformer-pytorch ``Attention``),
        ``"sdpa"`` (a module calling ``F.scaled_dot_product_attention``) or ``"flash"`` (a module
        calling the ``flash_attn`` package's kernels). Block index k refers to
        entry k. Empty if the model has no attention.

    Example:
        >>> layer = torch.nn.TransformerEncoderLayer(4, 2, batch_first=True)
        >>> list_attention_blocks(torch.nn.Sequential(layer))
        [('0.self_attn', 'mha')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return [(name, kind) for name, _, kind in _find_blocks(model)]


# --------------------------------------------------------------------------------------------
# Attention probabilities from captured inputs
# --------------------------------------------------------------------------------------------

_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_probabilities(query: torch.Tensor, key: torch.Tensor, value: Any = None,
                       attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: Optional[float] = None,
                       enable_gqa: bool = False) -> torch.Tensor:
    """The attention probabilities that ``F.scaled_dot_product_attention`` uses (no dropout).

    softmax(q k^T * scale + bias) over keys, in float32, where bias comes from ``attn_mask``
    (boolean: True = may attend; float: added) and ``is_causal`` (lower-triangular, top-left
    aligned). With grouped-query attention the key heads are repeated. Rows whose keys are all
    masked are 0, like torch's math kernel.

    Args:
        query: (..., H, L, E). key: (..., H_kv, S, E). value: ignored.
        attn_mask: broadcastable to (..., H, L, S). Default None.
        dropout_p: ignored (eval mode). Default 0.0.
        is_causal: Default False. scale: Default None (1 / sqrt(E)). enable_gqa: Default False.

    Returns:
        float32 (..., H, L, S).

    Example:
        >>> q = torch.randn(1, 2, 3, 4)
        >>> sdpa_probabilities(q, q).sum(-1).allclose(torch.ones(1, 2, 3))
        True
    """
    q, k = query.float(), key.float()
    n_q, n_k = q.shape[-2], k.shape[-2]
    if q.ndim >= 3 and k.ndim >= 3 and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # grouped-query attention
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    logits = (q @ k.transpose(-2, -1)) * s  # (..., H, L, S)
    if is_causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask.float()
    return _masked_softmax(logits)


def _masked_softmax(logits: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    dead = torch.isneginf(logits.amax(dim=-1, keepdim=True))  # rows with every key masked
    return probs.masked_fill(dead, 0.0)


def flash_probabilities(q: torch.Tensor, k: torch.Tensor, softmax_scale: Optional[float] = None,
                        causal: bool = False, window_size: Tuple[int, int] = (-1, -1),
                        softcap: float = 0.0, alibi_slopes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The attention probabilities of the ``flash_attn`` package's ``flash_attn_func`` (no dropout).

    Follows flash-attn 2's documented semantics: scores = q k^T * softmax_scale, soft-capped to
    softcap * tanh(scores / softcap) when softcap > 0, minus alibi_slope * |i + S - L - j|; the
    causal mask and the sliding window (query i sees keys i + S - L - left .. i + S - L + right)
    are aligned to the bottom-right corner; grouped/multi-query key heads are repeated.

    Args:
        q: (B, L, H, d). k: (B, S, H_k, d).
        softmax_scale: Default None (1 / sqrt(d)). causal: Default False.
        window_size: (left, right), -1 = unlimited. Default (-1, -1).
        softcap: Default 0.0 (off). alibi_slopes: (H,) or (B, H). Default None.

    Returns:
        float32 (B, H, L, S).

    Example:
        >>> q = torch.randn(1, 3, 2, 4)
        >>> flash_probabilities(q, q, causal=True)[0, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    qh, kh = q.float().transpose(1, 2), k.float().transpose(1, 2)  # (B, H, L, d), (B, H_k, S, d)
    if kh.shape[1] != qh.shape[1]:
        kh = kh.repeat_interleave(qh.shape[1] // kh.shape[1], dim=1)
    n_q, n_k = qh.shape[2], kh.shape[2]
    scale = 1.0 / math.sqrt(qh.shape[-1]) if softmax_scale is None else float(softmax_scale)
    logits = (qh @ kh.transpose(-2, -1)) * scale  # (B, H, L, S)
    if softcap and softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    rel = (torch.arange(n_k, device=qh.device)[None, :]
           - torch.arange(n_q, device=qh.device)[:, None] - (n_k - n_q))  # j - (i + S - L)
    if alibi_slopes is not None:
        slopes = alibi_slopes.float().to(qh.device)
        slopes = slopes.reshape(-1, qh.shape[1], 1, 1) if slopes.ndim == 2 else slopes.reshape(1, -1, 1, 1)
        logits = logits - slopes * rel.abs().float()
    left, right = (int(w) for w in window_size)
    if causal:
        right = 0
    keep = torch.ones(n_q, n_k, dtype=torch.bool, device=qh.device)
    if left >= 0:
        keep &= rel >= -left
    if right >= 0:
        keep &= rel <= right
    return _masked_softmax(logits.masked_fill(~keep, float("-inf")))


def _bind_kernel_args(original: Callable, names: Sequence[str], args: tuple, kwargs: dict) -> dict:
    try:
        return dict(inspect.signature(original).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):  # builtins without a signature: the documented order
        params = dict(zip(names, args))
        params.update(kwargs)
        return params


_FLASH_PARAMS = ("q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
                 "alibi_slopes")


def _probs_from_call(name: str, original: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """Attention probabilities of one fused-kernel call, (B, H, L, S) float32."""
    if name == "scaled_dot_product_attention":  # a builtin: no signature to bind to
        params = dict(zip(_SDPA_PARAMS, args))
        params.update(kwargs)
        return sdpa_probabilities(**{k: v for k, v in params.items() if k in _SDPA_PARAMS})
    if name == "flash_attn_qkvpacked_func":
        params = _bind_kernel_args(original, ("qkv",) + _FLASH_PARAMS[3:], args, kwargs)
        qkv = params.pop("qkv")  # (B, L, 3, H, d)
        params["q"], params["k"] = qkv[:, :, 0], qkv[:, :, 1]
    elif name == "flash_attn_kvpacked_func":
        params = _bind_kernel_args(original, ("q", "kv") + _FLASH_PARAMS[3:], args, kwargs)
        params["k"] = params.pop("kv")[:, :, 0]  # kv (B, S, 2, H_k, d)
    else:
        params = _bind_kernel_args(original, _FLASH_PARAMS, args, kwargs)
    keep = ("q", "k", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes")
    return flash_probabilities(**{k: v for k, v in params.items() if k in keep})


# --------------------------------------------------------------------------------------------
# Capturing
# --------------------------------------------------------------------------------------------

_TLS = threading.local()  # .capture: the _Capture active in this thread, if any


class _Capture:
    """Collects the probabilities of the requested blocks into one numpy array."""

    def __init__(self, blocks, slots: Dict[int, List[int]], n_slots: int, batch: int,
                 average_heads: bool, torch_dtype: torch.dtype, np_dtype: np.dtype):
        self.blocks = blocks
        self.slots = slots  # block index -> output slots
        self.n_slots = n_slots
        self.batch = batch
        self.average_heads = average_heads
        self.torch_dtype, self.np_dtype = torch_dtype, np_dtype
        self.done: set = set()
        self.out: Optional[np.ndarray] = None
        self.first_shape: Optional[Tuple[int, Tuple[int, ...]]] = None
        self.active: List[int] = []  # stack of running block indices (for sdpa attribution)

    def deliver(self, i: int, probs: torch.Tensor) -> None:
        if i not in self.slots or i in self.done:
            return
        name = self.blocks[i][0]
        p = probs.detach()
        if p.ndim < 2 or p.numel() % (self.batch * p.shape[-2] * p.shape[-1]) != 0:
            raise ValueError(
                f"block {i} ({name!r}): attention of shape {tuple(p.shape)} does not match "
                f"batch size {self.batch}"
            )
        p = p.reshape(self.batch, -1, p.shape[-2], p.shape[-1])  # (B, H, L', S)
        if self.average_heads:
            p = p.float().mean(dim=1)  # (B, L', S)
        arr = p.to(self.torch_dtype).cpu().numpy()
        if self.out is None:
            self.out = np.empty((self.batch, self.n_slots) + arr.shape[1:], dtype=self.np_dtype)
            self.first_shape = (i, arr.shape[1:])
        elif arr.shape[1:] != self.out.shape[2:]:
            j, shape = self.first_shape
            raise ValueError(
                f"blocks {j} and {i} have attention of different shapes ({shape} and "
                f"{arr.shape[1:]}, heads x queries x keys); request them separately with block_idx"
            )
        for s in self.slots[i]:
            self.out[:, s] = arr
        self.done.add(i)
        if len(self.done) == len(self.slots):
            raise _StopForward()


def _mha_hook(cap: _Capture, i: int):
    def hook(module, args, kwargs):
        if i not in cap.slots or i in cap.done:
            return None
        try:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
            bound.arguments["need_weights"] = True
            bound.arguments["average_attn_weights"] = False
            call_args, call_kwargs = bound.args, bound.kwargs
        except TypeError as e:
            raise TypeError(f"block {i} ({cap.blocks[i][0]!r}): cannot repeat the attention call: {e}") from e
        _, weights = module.forward(*call_args, **call_kwargs)  # (N, H, L, S) or (H, L, S)
        cap.deliver(i, weights)
        return None

    return hook


def _scores_hook(cap: _Capture, i: int):
    def hook(module, args, kwargs):
        if i not in cap.slots or i in cap.done:
            return None
        if args:
            x = args[0]
        elif kwargs:
            x = next(iter(kwargs.values()))
        else:
            raise ValueError(f"block {i} ({cap.blocks[i][0]!r}) was called without an input")
        cap.deliver(i, module.get_attn_scores(x))
        return None

    return hook


def _dropout_hook(cap: _Capture, i: int):
    def hook(module, args):
        cap.deliver(i, args[0])  # the softmax output, (B, H, L, L)
        return None

    return hook


def _push_hook(cap: _Capture, i: int):
    def hook(module, args):
        cap.active.append(i)
        return None

    return hook


def _pop_hook(cap: _Capture, i: int):
    def hook(module, args, output):
        if cap.active and cap.active[-1] == i:
            cap.active.pop()
        return None

    return hook


def _make_wrapper(name: str, original: Callable) -> Callable:
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        cap = getattr(_TLS, "capture", None)  # only the thread running get_attention_scores
        if cap is not None and cap.active:
            i = cap.active[-1]  # innermost running attention block
            if cap.blocks[i][2] in ("sdpa", "flash") and i in cap.slots and i not in cap.done:
                cap.deliver(i, _probs_from_call(name, original, args, kwargs))
        return original(*args, **kwargs)

    return wrapper


# Fused attention kernels: name -> the module that defines it (patched when loaded), and modules
# that re-export it.
_KERNEL_HOMES = {
    "scaled_dot_product_attention": ("torch.nn.functional", ()),
    "flash_attn_func": ("flash_attn.flash_attn_interface", ("flash_attn",)),
    "flash_attn_qkvpacked_func": ("flash_attn.flash_attn_interface", ("flash_attn",)),
    "flash_attn_kvpacked_func": ("flash_attn.flash_attn_interface", ("flash_attn",)),
}


class _GlobalPatches:
    """Process-wide changes needed while capturing, reference-counted across threads.

    * fused kernels: ``F.scaled_dot_product_attention`` and (when the ``flash_attn`` package is
      loaded) its ``flash_attn_func`` / ``flash_attn_qkvpacked_func`` / ``flash_attn_kvpacked_func``
      are replaced, in their home modules, in re-exporting modules and wherever the modules
      defining the blocks bound them to another name, by wrappers that record only for the thread
      whose capture is active. When the last concurrent user exits, every replaced name gets its
      original value back.
    * ``fastpath_off``: torch's transformer fast path is disabled until the last user exits, then
      the setting found by the first user is restored.
    """

    _lock = threading.Lock()
    _kernel_users = 0
    _installed: Dict[str, Tuple[Callable, Callable]] = {}  # name -> (original, wrapper)
    _saved: Dict[Tuple[int, str], Tuple[Any, str, Any]] = {}  # (id(obj), attr) -> restore info
    _fast_users = 0
    _fast_prev: Optional[bool] = None

    def __init__(self, block_modules: Sequence[str], fastpath_off: bool):
        self.kernels = bool(block_modules)
        self.block_modules = sorted(set(block_modules))
        self.fastpath_off = fastpath_off and hasattr(torch.backends, "mha")
        self.entered_kernels = self.entered_fast = False

    def __enter__(self):
        cls = _GlobalPatches
        with cls._lock:
            try:
                if self.kernels:
                    cls._kernel_users += 1
                    self.entered_kernels = True
                    aliases = list(self.block_modules)
                    for name, (home_name, reexports) in _KERNEL_HOMES.items():
                        home = sys.modules.get(home_name)
                        if home is None or not callable(getattr(home, name, None)):
                            continue
                        if name not in cls._installed:
                            original = getattr(home, name)
                            cls._installed[name] = (original, _make_wrapper(name, original))
                        cls._patch(home, name, cls._installed[name][1])
                        aliases.extend(reexports)
                    originals = {id(orig): wrap for orig, wrap in cls._installed.values()}
                    for mod_name in aliases:
                        mod = sys.modules.get(mod_name)
                        for attr, val in list(vars(mod).items()) if mod is not None else []:
                            if id(val) in originals:
                                cls._patch(mod, attr, originals[id(val)])
                if self.fastpath_off:
                    if cls._fast_users == 0:
                        cls._fast_prev = torch.backends.mha.get_fastpath_enabled()
                        torch.backends.mha.set_fastpath_enabled(False)
                    cls._fast_users += 1
                    self.entered_fast = True
            except BaseException:
                self._release()
                raise
        return self

    @classmethod
    def _patch(cls, obj: Any, attr: str, wrapper: Callable) -> None:
        key = (id(obj), attr)
        if key not in cls._saved:
            cls._saved[key] = (obj, attr, getattr(obj, attr))
            setattr(obj, attr, wrapper)

    def _release(self) -> None:
        cls = _GlobalPatches
        if self.entered_kernels:
            self.entered_kernels = False
            cls._kernel_users -= 1
            if cls._kernel_users == 0:
                for obj, attr, val in cls._saved.values():
                    setattr(obj, attr, val)
                cls._saved.clear()
                cls._installed.clear()
        if self.entered_fast:
            self.entered_fast = False
            cls._fast_users -= 1
            if cls._fast_users == 0:
                torch.backends.mha.set_fastpath_enabled(bool(cls._fast_prev))

    def __exit__(self, *exc):
        with _GlobalPatches._lock:
            self._release()
        return False


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

_NP_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
              np.dtype(np.float64): torch.float64}


def _resolve_dtype(dtype: Any) -> Tuple[np.dtype, torch.dtype]:
    if isinstance(dtype, torch.dtype):
        for np_dt, t_dt in _NP_DTYPES.items():
            if t_dt == dtype:
                return np_dt, t_dt
        raise ValueError(f"dtype: expected float16, float32 or float64 (numpy has no {dtype}), got {dtype}")
    try:
        np_dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected a float16, float32 or float64 dtype, got {dtype!r}") from None
    if np_dt not in _NP_DTYPES:
        raise ValueError(f"dtype: expected a float16, float32 or float64 dtype, got {np_dt}")
    return np_dt, _NP_DTYPES[np_dt]


def _check_index(value: Any, arg: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg}: expected an integer block index, got {value!r}")
    return int(value)


def _normalise(k: int, n: int, blocks, arg: str) -> int:
    if not -n <= k < n:
        names = ", ".join(name or "<model>" for name, _, _ in blocks)
        raise IndexError(
            f"index {k} is out of range: {arg} must be in [-{n}, {n}) for the {n} attention "
            f"block(s) found ({names})"
        )
    return k % n


def _call_model(model: nn.Module, x: torch.Tensor) -> Any:
    # enformer-pytorch's Enformer takes (B, L, 4); every other model gets (B, 4, L).
    cls = type(model)
    if cls.__name__ == "Enformer" and cls.__module__.startswith("enformer_pytorch"):
        x = x.transpose(1, 2)
    return model(x)


def get_attention_scores(
    model: nn.Module,
    seqs: Any,
    block_idx: Optional[int] = None,
    genome: Any = None,
    *,
    average_heads: bool = False,
    dtype: Any = np.float32,
    blocks: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Attention probabilities of a transformer's attention blocks for some sequences.

    Drop-in for gReLU 1.1.0's ``get_attention_scores``: same arguments, shapes and numbers for
    gReLU transformer models, plus any model whose attention is ``nn.MultiheadAttention``,
    enformer-pytorch's ``Attention``, ``F.scaled_dot_product_attention`` or the ``flash_attn``
    package's kernels (see the module docstring for how each is captured and which modules count
    as blocks, and :func:`list_attention_blocks` for a model's block list). The model is called once as
    ``model(x)`` with x the one-hot (B, 4, L) input (enformer-pytorch's ``Enformer`` gets
    (B, L, 4)), in eval mode, under ``torch.no_grad``, on the model's device; the forward stops
    right after the last requested block. The model's training flags are restored afterwards.

    Rows are queries, columns keys; each row sums to 1 over the keys. Shapes (H heads, L' the
    length inside the transformer, S the number of keys, S = L' for self-attention):

    * ``block_idx=None, blocks=None``: (B, n_blocks, H, L', S), every block;
    * ``block_idx=k``: (B, H, L', S), block k; negative k counts from the end (-1 = last);
    * ``blocks=[k1, k2, ...]``: (B, len(blocks), H, L', S), in the order given;
    * the batch axis is dropped when B == 1 (as gReLU does), kept for B > 1;
    * ``average_heads=True`` drops the H axis (mean over heads).

    Memory: the result takes B * n_blocks * H * L'^2 * itemsize bytes (H = 1 with
    ``average_heads``; itemsize 2, 4 or 8 for float16/32/64). For example B = 1, 8 blocks,
    8 heads, L' = 1536 in float32 is 604 MB; ``average_heads=True`` and ``dtype=np.float16``
    cut that 16-fold. While running, the model's device also holds one block's probabilities,
    B * H * L'^2 * 4 bytes in float32 (the model's precision for gReLU, torch and enformer-pytorch
    attention; float32 for recomputed fused kernels), besides the model's own activations.

    Args:
        model: a ``torch.nn.Module`` taking one-hot (B, 4, L) input, such as a gReLU
            ``LightningModel``; it is not moved.
        seqs: DNA sequences in any form :func:`basewise.sequence.to_onehot` accepts (strings,
            index arrays, one-hot tensors or arrays, a DataFrame of intervals with ``genome``).
        block_idx: one block to return, or None for all. Default None.
        genome: FASTA path or genome name for interval input. Default None.
        average_heads: average the probabilities over heads. Keyword-only. Default False.
        dtype: numpy or torch float dtype of the result (float16, float32 or float64; the
            probabilities are computed in the model's precision). Keyword-only.
            Default np.float32.
        blocks: a list of block indices to return (not together with ``block_idx``).
            Keyword-only. Default None.

    Returns:
        np.ndarray of ``dtype`` with the shape described above.

    Raises:
        AttentionNotFoundError: the model has no supported attention module (names what was
            searched for); an ``AttributeError`` and a ``ValueError``.
        IndexError: ``block_idx`` or an entry of ``blocks`` is out of range ("index k is out of
            range"), raised before any computation.
        TypeError / ValueError: invalid ``model``, ``seqs``, ``block_idx``, ``blocks`` or
            ``dtype``.
        RuntimeError: a requested block was not called during the forward.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem = torch.nn.Conv1d(4, 8, 3, padding=1)
        ...         self.layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        ...     def forward(self, x):  # (B, 4, L)
        ...         return self.layer(self.stem(x).transpose(1, 2))  # (B, L, 8)
        >>> a = get_attention_scores(Net(), ["ACGTA", "GGCCN"], block_idx=-1)
        >>> a.shape, bool(np.allclose(a.sum(-1), 1, atol=1e-5))
        ((2, 2, 5, 5), True)
        >>> get_attention_scores(Net(), "ACGTA", average_heads=True, dtype=np.float16).shape
        (1, 5, 5)
    """
    # ---- validation, before any model computation ----
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if block_idx is not None:
        block_idx = _check_index(block_idx, "block_idx")
    if blocks is not None:
        if block_idx is not None:
            raise ValueError("blocks: give either block_idx or blocks, not both")
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, (Sequence, np.ndarray)):
            raise TypeError(f"blocks: expected a list of integer block indices, got {blocks!r}")
        blocks = [_check_index(b, "blocks") for b in blocks]
        if not blocks:
            raise ValueError("blocks: expected at least one block index, got an empty list")
    if not isinstance(average_heads, (bool, np.bool_)):
        raise TypeError(f"average_heads: expected True or False, got {average_heads!r}")
    np_dtype, torch_dtype = _resolve_dtype(dtype)

    x = to_onehot(seqs, genome)  # (B, 4, L)
    batch = x.shape[0]
    if batch == 0:
        raise ValueError("seqs: expected at least one sequence")

    found = _find_blocks(model)
    if not found:
        raise AttentionNotFoundError(
            f"model: no attention module found in {type(model).__name__}; searched for "
            + "; ".join(SEARCHED)
        )
    n = len(found)
    if block_idx is not None:
        requested = [_normalise(block_idx, n, found, "block_idx")]
    elif blocks is not None:
        requested = [_normalise(b, n, found, "blocks") for b in blocks]
    else:
        requested = list(range(n))
    slots: Dict[int, List[int]] = {}
    for s, i in enumerate(requested):
        slots.setdefault(i, []).append(s)

    # ---- one forward pass with hooks ----
    cap = _Capture(found, slots, len(requested), batch, bool(average_heads), torch_dtype, np_dtype)
    kinds = {kind for _, _, kind in found}
    last = max(slots)
    handles = []
    prev_capture = getattr(_TLS, "capture", None)
    try:
        for i, (name, m, kind) in enumerate(found):
            if i > last:
                break  # blocks after the last requested one are never reached
            if kinds & {"sdpa", "flash"}:  # track the running block, to attribute kernel calls
                handles.append(m.register_forward_pre_hook(_push_hook(cap, i)))
                handles.append(m.register_forward_hook(_pop_hook(cap, i), always_call=True))
            if kind == "mha":
                handles.append(m.register_forward_pre_hook(_mha_hook(cap, i), with_kwargs=True))
            elif kind == "scores":
                handles.append(m.register_forward_pre_hook(_scores_hook(cap, i), with_kwargs=True))
            elif kind == "enformer":
                handles.append(m.attn_dropout.register_forward_pre_hook(_dropout_hook(cap, i)))
        fused_modules = [type(m).__module__ for _, m, kind in found if kind in ("sdpa", "flash")]
        with preserved_model_state(model), torch.no_grad(), _GlobalPatches(fused_modules, "mha" in kinds):
            eval_mode(model)
            x = x.to(device=model_device(model), dtype=model_dtype(model))
            _TLS.capture = cap
            try:
                _call_model(model, x)
            except _StopForward:
                pass
            finally:
                _TLS.capture = prev_capture
    finally:
        for h in handles:
            h.remove()

    missing = [i for i in slots if i not in cap.done]
    if missing:
        names = ", ".join(f"{i} ({found[i][0]!r}, {found[i][2]})" for i in missing)
        raise RuntimeError(
            f"model: attention block(s) {names} produced no attention during the forward pass "
            "(not called, or computed without a supported attention call)"
        )
    out = cap.out  # (B, n_slots, [H,] L', S)
    if block_idx is not None:
        out = out[:, 0]
    if batch == 1:
        out = out[0]
    return np.ascontiguousarray(out)

