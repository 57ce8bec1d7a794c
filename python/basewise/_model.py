"""Model handling shared by ISM and attributions.

basewise accepts any ``torch.nn.Module`` (or plain callable) and gReLU ``LightningModel`` objects,
recognised by duck typing: they have ``add_transform``, ``reset_transform`` and a ``transform``
attribute, and their ``forward`` applies the network, then the output activation, then the
transform. basewise never imports grelu.

Unlike gReLU, the caller's model is left exactly as it was: :func:`preserved_model_state` records
the training flag of every submodule, the transform, every parameter's and buffer's device and
``requires_grad``, and restores them on exit, also when an exception is raised.

Example:
    >>> import torch
    >>> m = torch.nn.Conv1d(4, 1, 3).train()
    >>> with preserved_model_state(m):
    ...     _ = m.eval()
    >>> m.training
    True
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

import torch

__all__ = ["is_lightning_like", "preserved_model_state", "model_device", "model_dtype", "make_forward",
           "tensor_digest", "plain_attributes", "eval_mode"]


def is_lightning_like(model: Any) -> bool:
    """True for gReLU ``LightningModel``-like objects (``add_transform``/``reset_transform``)."""
    return callable(getattr(model, "add_transform", None)) and callable(
        getattr(model, "reset_transform", None)
    )


def _first_tensor(model: Any) -> Optional[torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            return t
        for t in model.buffers():
            return t
    return None


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for parameter-free callables."""
    t = _first_tensor(model)
    return t.device if t is not None else torch.device("cpu")


def model_dtype(model: Any) -> torch.dtype:
    """Floating dtype of the model's first floating parameter; float32 if it has none."""
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            if t.is_floating_point():
                return t.dtype
    return torch.float32


@contextlib.contextmanager
def preserved_model_state(model: Any) -> Iterator[None]:
    """Restore the model's training flags, transform, devices and ``requires_grad`` on exit.

    Args:
        model: an ``nn.Module``, a LightningModel-like object or a plain callable (for which
            nothing needs restoring).

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> with preserved_model_state(m):
        ...     _ = m.weight.requires_grad_(False)
        ...     _ = m.to(torch.float64)
        >>> (m.weight.requires_grad, m.weight.dtype)
        (True, torch.float32)
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    has_transform = hasattr(model, "transform")
    transform = getattr(model, "transform", None)
    params = [(p, p.data, p.requires_grad) for p in model.parameters()]
    # named_buffers(recurse=False), not m._buffers: TorchScript modules wrap _buffers in an
    # OrderedDictWrapper without .get
    buffers = [(m, name, b) for m in model.modules() for name, b in m.named_buffers(recurse=False)
               if b is not None]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        if has_transform and getattr(model, "transform", None) is not transform:
            setattr(model, "transform", transform)
        for p, data, requires_grad in params:
            if p.data is not data:
                p.data = data  # moving back restores the caller's exact storage (device, dtype)
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
        for m, name, b in buffers:
            if getattr(m, name, None) is not b:
                try:
                    m._buffers[name] = b
                except Exception:  # noqa: BLE001 - a module type that refuses it keeps its buffer
                    pass


def eval_mode(model: Any) -> None:
    """Put a module in evaluation mode. Programs from ``torch.export.load(...).module()`` refuse
    ``eval()`` (they were traced in one mode already), so their flags are set directly.

    Example:
        >>> m = torch.nn.Dropout().train(); eval_mode(m); m.training
        False
    """
    if not isinstance(model, torch.nn.Module):
        return
    try:
        model.eval()
    except NotImplementedError:
        for m in model.modules():
            m.training = False


def _as_3d(y: Any) -> torch.Tensor:
    """Model output to (B, T, L_out): (B,) -> (B, 1, 1), (B, T) -> (B, T, 1)."""
    if isinstance(y, (tuple, list)):
        raise ValueError(
            "model: the model returned a tuple/list of outputs; pass a prediction_transform "
            "that reduces them to one (B, T, L_out) tensor"
        )
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"model: expected the model to return a tensor, got {type(y).__name__}")
    if y.ndim == 1:
        return y[:, None, None]
    if y.ndim == 2:
        return y[:, :, None]
    if y.ndim == 3:
        return y
    raise ValueError(
        f"model: expected model output of shape (B, T, L_out) or (B, T), got {tuple(y.shape)}"
    )


def make_forward(model: Any, prediction_transform: Optional[Callable] = None) -> Callable:
    """The function basewise explains or mutates: model, activation, transform.

    For a LightningModel-like object the caller must already have attached the transform
    (``model.add_transform``) inside :func:`preserved_model_state`; its own ``forward`` then
    applies the activation and the transform. For a plain module the transform (if any) is
    applied to the module's output. Outputs are shaped (B, T, L_out).

    Args:
        model: the model.
        prediction_transform: callable applied to plain modules' outputs. Default None.

    Returns:
        A callable mapping (B, 4, L) one-hot (plus any extra positional arguments, passed on to
        the model: captum's ``additional_forward_args``) to (B, T, L_out).
    """
    if is_lightning_like(model) or prediction_transform is None:
        return lambda x, *args: _batched_3d(model(x, *args), x)

    def forward(x: torch.Tensor, *args: Any) -> torch.Tensor:
        return _batched_3d(prediction_transform(model(x, *args)), x)

    return forward


def _batched_3d(y: Any, x: torch.Tensor) -> torch.Tensor:
    """:func:`_as_3d` after checking that the output's first axis is the input's batch axis.

    A forward ending in ``.squeeze()`` returns (T,) for one sequence: read as T sequences it
    would silently give wrong numbers (a target selecting task 0 of T "sequences")."""
    if isinstance(y, torch.Tensor) and (y.ndim == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(
            f"model: for a batch of {x.shape[0]} sequence(s) the model returned shape "
            f"{tuple(y.shape)}; its first axis must be the batch axis, (B, T, L_out) or (B, T). "
            f"A forward that ends in .squeeze() drops it for one sequence: squeeze named "
            f"axes instead (e.g. .squeeze(-1))"
        )
    return _as_3d(y)


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """A content fingerprint (hex) of tensors: shapes, dtypes and every byte of their values.

    Keys caches on what numbers depend on: unlike version counters it sees ``.data`` writes,
    writes through numpy views and ``load_state_dict``. CUDA tensors are copied to the host
    first. About 0.1 s per 100 MB on one core (SHA-1 of the bytes).

    Args:
        tensors: the tensors, in a fixed order.

    Returns:
        A 40-character hex string.

    Example:
        >>> a = torch.ones(3)
        >>> d = tensor_digest([a]); a.data[0] = 2.0
        >>> d == tensor_digest([a])
        False
    """
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel() == 0:
            continue
        if t.device.type != "cpu":
            t = t.cpu()
        b = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        h.update(memoryview(b))
    return h.hexdigest()


_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _plain(v: Any, depth: int = 0) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if isinstance(v, (tuple, list)) and depth < 2 and len(v) <= 64:
        return all(_plain(x, depth + 1) for x in v)
    return False


def plain_attributes(module: torch.nn.Module) -> Tuple:
    """The plain Python attributes of every submodule (numbers, strings, flags, small tuples).

    A captured program specialises on them (``self.scale``, a reverse-complement flag), so a
    cache of captured programs must be keyed on them. Private names (``_x``) are skipped.

    Example:
        >>> m = torch.nn.Conv1d(4, 1, 3)
        >>> ("", "kernel_size", (3,)) in plain_attributes(m)
        True
    """
    out = []
    for name, m in module.named_modules():
        for k, v in vars(m).items():
            if k.startswith("_") or not _plain(v):
                continue
            out.append((name, k, tuple(v) if isinstance(v, list) else v))
    return tuple(out)
