"""Prediction transforms: select output tasks and bins, then aggregate them (gReLU's ``Aggregate``).

A prediction transform maps the model output (B, T, L_out) to a smaller (B, T', L_out') tensor,
typically (B, 1, 1), so that ISM reports one number per mutant and attribution methods explain a
scalar. :class:`Aggregate` has the semantics of gReLU 1.1.0's
``grelu.transforms.prediction_transforms.Aggregate`` (same arguments, same order of operations,
same numbers and gradients), so ``basewise.Aggregate(...)`` can be passed wherever gReLU's is.

Order of operations in ``forward`` (and in ``compute`` for numpy arrays):

1. keep the output bins in ``positions`` (axis 2);
2. keep the tasks in ``tasks`` (axis 1), or all tasks except ``except_tasks``;
3. aggregate over length with ``length_aggfunc`` (keeping the axis), then over tasks with
   ``task_aggfunc`` (keeping the axis);
4. multiply by ``weight``.

Differences from gReLU, all where gReLU fails: ``"absmax"`` works in torch (gReLU's returns a
tuple), numpy arrays and tensors of indices of any shape are accepted, an unknown aggregation
name raises :class:`UnknownAggFuncError` (a ``ValueError`` and a ``NotImplementedError``) naming
the argument, and empty task or position selections are refused when the transform is built.

Example:
    >>> import torch
    >>> from basewise.transforms import Aggregate
    >>> y = torch.arange(24.0).reshape(1, 3, 8)  # (B, T, L_out)
    >>> Aggregate(tasks=[0, 2], positions=[1, 2], length_aggfunc="sum", task_aggfunc="mean")(y)
    tensor([[[19.]]])
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["Aggregate", "UnknownAggFuncError", "AGGFUNCS"]

AGGFUNCS = ("sum", "mean", "min", "max", "absmax")


class UnknownAggFuncError(ValueError, NotImplementedError):
    """Unknown aggregation name; also a ``NotImplementedError``, which gReLU raised."""


def _torch_aggfunc(name: Union[None, str, Callable], arg: str) -> Optional[Callable]:
    """``f(x, axis, keepdims)`` on tensors. min/max take values of ``torch.min/max`` so the
    gradient goes to one index, as in gReLU (``amax`` would share it between ties)."""
    if name is None or callable(name):
        return name
    if name == "sum":
        return lambda x, axis, keepdims: torch.sum(x, dim=axis, keepdim=keepdims)
    if name == "mean":
        return lambda x, axis, keepdims: torch.mean(x, dim=axis, keepdim=keepdims)
    if name == "max":
        return lambda x, axis, keepdims: torch.max(x, dim=axis, keepdim=keepdims).values
    if name == "min":
        return lambda x, axis, keepdims: torch.min(x, dim=axis, keepdim=keepdims).values
    if name == "absmax":
        return lambda x, axis, keepdims: torch.max(torch.abs(x), dim=axis, keepdim=keepdims).values
    raise UnknownAggFuncError(f"{arg}: expected None, a callable or one of {AGGFUNCS}, got {name!r}")


def _numpy_aggfunc(name: Union[None, str, Callable]) -> Optional[Callable]:
    if name is None or callable(name):
        return name
    return {
        "sum": np.sum,
        "mean": np.mean,
        "max": np.max,
        "min": np.min,
        "absmax": lambda x, axis, keepdims: np.max(np.abs(x), axis=axis, keepdims=keepdims),
    }[name]


def _as_list(x: Any, arg: str) -> Optional[list]:
    """None, a scalar, or any sequence/array/tensor of scalars -> None or a flat list."""
    if x is None:
        return None
    if isinstance(x, (str, int, np.integer)) and not isinstance(x, bool):
        out = [x]
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        out = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x).reshape(-1).tolist()
    elif isinstance(x, (list, tuple, range, set)) or hasattr(x, "tolist"):
        out = list(x.tolist() if hasattr(x, "tolist") else x)
    else:
        raise ValueError(f"{arg}: expected an index, a name or a list of them, got {type(x).__name__}")
    if len(out) == 0:
        raise ValueError(f"{arg}: the selection is empty")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
            raise ValueError(f"{arg}: expected integer indices or task names, got {v!r}")
    return [v if isinstance(v, str) else int(v) for v in out]


def _resolve_names(values: list, model: Any, arg: str) -> List[int]:
    if not any(isinstance(v, str) for v in values):
        return values
    if model is None:
        raise ValueError(f"{arg}: task names {values!r} need `model` (with get_task_idxs) to resolve them")
    names = _task_names(model)
    missing = [v for v in values if isinstance(v, str) and names is not None and v not in names]
    if missing:  # before get_task_idxs, whose error (list.index) names neither the argument nor the choices
        raise ValueError(f"{arg}: unknown task names {missing!r}")
    if hasattr(model, "get_task_idxs"):
        out = model.get_task_idxs(values)
        return [int(i) for i in _as_list(out, arg)]
    if names is None:
        raise ValueError(f"{arg}: cannot resolve task names: the model has no get_task_idxs or task list")
    missing = [v for v in values if isinstance(v, str) and v not in names]
    if missing:
        raise ValueError(f"{arg}: unknown task names {missing!r}")
    return [names.index(v) if isinstance(v, str) else v for v in values]


def _task_names(model: Any) -> Optional[List[str]]:
    params = getattr(model, "data_params", None)
    try:
        return list(params["tasks"]["name"])
    except (TypeError, KeyError):
        return None


def _n_tasks(model: Any) -> Optional[int]:
    params = getattr(model, "model_params", None)
    try:
        return int(params["n_tasks"])
    except (TypeError, KeyError, ValueError):
        return None


class Aggregate(torch.nn.Module):
    """Select tasks and output bins of a prediction and aggregate them, as gReLU's ``Aggregate``.

    Args:
        tasks: task indices (or names, resolved through ``model``) to keep. Default None (all).
        except_tasks: task indices or names to drop (used when ``tasks`` is None, and removed from
            ``tasks`` otherwise). Default None.
        positions: output bins to keep along the length axis. Default None (all).
        length_aggfunc: "sum", "mean", "min", "max", "absmax" or a callable
            ``f(x, axis=..., keepdims=True)``, applied over length. Default None (no aggregation).
        task_aggfunc: the same, applied over tasks after the length aggregation. Default None.
        model: a gReLU LightningModel (or anything with ``get_task_idxs`` /
            ``model_params["n_tasks"]``), needed for task names. Default None.
        weight: factor the result is multiplied by. Default None (1).

    Shapes: input (B, T, L_out); output (B, T', L_out') with T' = 1 when ``task_aggfunc`` is set
    and L_out' = 1 when ``length_aggfunc`` is set.

    Example:
        >>> y = torch.tensor([[[1.0, 5.0], [2.0, -7.0]]])  # (1, 2, 2)
        >>> Aggregate(length_aggfunc="max")(y).flatten().tolist()
        [5.0, 2.0]
        >>> Aggregate(except_tasks=[0], length_aggfunc="absmax", weight=2)(y).flatten().tolist()
        [14.0]
    """

    def __init__(
        self,
        tasks: Optional[Union[Sequence[int], Sequence[str], int, str]] = None,
        except_tasks: Optional[Union[Sequence[int], Sequence[str], int, str]] = None,
        positions: Optional[Sequence[int]] = None,
        length_aggfunc: Optional[Union[str, Callable]] = None,
        task_aggfunc: Optional[Union[str, Callable]] = None,
        model: Optional[Any] = None,
        weight: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.tasks = _as_list(tasks, "tasks")
        self.except_tasks = _as_list(except_tasks, "except_tasks")
        self.positions = _as_list(positions, "positions")
        if self.positions is not None and any(isinstance(p, str) for p in self.positions):
            raise ValueError(f"positions: expected integer output-bin indices, got {self.positions!r}")
        self.weight = 1 if weight is None else weight
        self.length_aggfunc = _torch_aggfunc(length_aggfunc, "length_aggfunc")
        self.task_aggfunc = _torch_aggfunc(task_aggfunc, "task_aggfunc")
        self.length_aggfunc_numpy = _numpy_aggfunc(length_aggfunc)
        self.task_aggfunc_numpy = _numpy_aggfunc(task_aggfunc)

        if self.tasks is not None:
            self.tasks = _resolve_names(self.tasks, model, "tasks")
        if self.except_tasks is not None:
            self.except_tasks = _resolve_names(self.except_tasks, model, "except_tasks")
            n_tasks = _n_tasks(model) if model is not None else None
            if self.tasks is None and n_tasks is not None:
                self.tasks = [i for i in range(n_tasks) if i not in self.except_tasks]
                self.except_tasks = None
            elif self.tasks is not None:
                self.tasks = [i for i in self.tasks if i not in self.except_tasks]
                self.except_tasks = None
            if self.tasks is not None and len(self.tasks) == 0:
                raise ValueError("except_tasks: every selected task is excluded; nothing is left")

    def filter(self, x: Union[torch.Tensor, np.ndarray]) -> Union[torch.Tensor, np.ndarray]:
        """Keep the selected output bins (axis 2) and tasks (axis 1) of (B, T, L_out)."""
        if x.ndim != 3:
            raise ValueError(f"Aggregate: expected predictions of shape (B, T, L_out), got {tuple(x.shape)}")
        if self.positions is not None:
            _check_range(self.positions, x.shape[2], "positions", "output bins")
            x = x[:, :, self.positions]
        if self.tasks is not None:
            _check_range(self.tasks, x.shape[1], "tasks", "tasks")
            x = x[:, self.tasks, :]
        elif self.except_tasks is not None:
            keep = [i for i in range(x.shape[1]) if i not in self.except_tasks]
            if not keep:
                raise ValueError("except_tasks: every task of the prediction is excluded")
            x = x[:, keep, :]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, L_out) tensor -> (B, T', L_out') tensor."""
        x = self.filter(x)
        if self.length_aggfunc is not None:
            x = self.length_aggfunc(x, axis=2, keepdims=True)
        if self.task_aggfunc is not None:
            x = self.task_aggfunc(x, axis=1, keepdims=True)
        return x * self.weight

    def compute(self, x: np.ndarray) -> np.ndarray:
        """The same on a numpy array (B, T, L_out)."""
        x = self.filter(np.asarray(x))
        if self.length_aggfunc_numpy is not None:
            x = self.length_aggfunc_numpy(x, axis=2, keepdims=True)
        if self.task_aggfunc_numpy is not None:
            x = self.task_aggfunc_numpy(x, axis=1, keepdims=True)
        return x * self.weight

    def extra_repr(self) -> str:
        parts = []
        for name in ("tasks", "except_tasks", "positions"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v if len(v) <= 8 else str(v[:8])[:-1] + ', ...]'}")
        if self.weight != 1:
            parts.append(f"weight={self.weight}")
        return ", ".join(parts)


def _check_range(idx: list, size: int, arg: str, what: str) -> None:
    bad = [i for i in idx if not -size <= i < size]
    if bad:
        raise IndexError(f"Aggregate {arg}: {bad[:5]!r} out of range for a prediction with {size} {what}")
