"""In-silico mutagenesis: ``ISM_predict``, an exact drop-in for gReLU's.

The engine predicts the reference sequence once and only the real substitutions (3 per position,
4 at an N): 3P + 1 forward passes per sequence instead of gReLU's 4P. Mutant one-hot batches are
written by the native ``mutate`` op directly on the model's device and in its dtype, predictions
are scattered into a preallocated (B, P, 4, T, L_out) float32 array by the native ``scatter_`` op,
and comparisons run in place (``compare_``). Peak memory is that output array plus working memory
proportional to ``batch_size``: sequences are processed in small chunks and no more than
``batch_size`` mutants exist at any time.

Two predictors produce the mutant predictions: the full-recompute :class:`FullPredictor` and the
exact incremental predictor of :mod:`basewise.incremental` (recompute only the window a
substitution can change). ``engine="auto"`` uses the incremental one when its planner supports
the model and predicts it to be faster.

Example:
    >>> import torch, basewise
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 1), torch.nn.AdaptiveAvgPool1d(1))
    >>> basewise.ISM_predict("ACGT", model).shape
    (4, 4)
"""

from __future__ import annotations

import collections
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from . import ops
from ._model import eval_mode, is_lightning_like, make_forward, model_dtype, preserved_model_state
from .sequence import indices_to_strings, to_indices

__all__ = ["ISM_predict", "FullPredictor", "COMPARE_FUNCS"]

COMPARE_FUNCS = ("subtract", "divide", "log2FC")
ENGINES = ("auto", "incremental", "full")

# gReLU's warning text, including the run of 17 spaces left by a line continuation.
_DF_WARNING = (
    "Cannot return a dataframe as either multiple sequences are"
    + " " * 17
    + "supplied or the model predictions are multi-dimensional. Returning Numpy array."
)


class UnknownCompareError(ValueError, NotImplementedError):
    """Unknown ``compare_func`` name; also a ``NotImplementedError``, which gReLU raised."""


class FullPredictor:
    """Full-recompute predictor: every mutant is a complete forward pass.

    Args:
        forward: callable mapping one-hot (N, 4, L) in ``dtype`` to (N, T, L_out).
        ref_idx: base indices of the reference sequences, uint8 (B, L) on the model's device.
        dtype: dtype of the one-hot batches. Default torch.float32.
        check: check the mutants' value ranges in :meth:`predict` (one device synchronisation
            per call on CUDA). ISM_predict passes False for the mutants it enumerates itself.
            Default True.

    Example:
        >>> f = lambda x: x.sum(dim=(1, 2))[:, None, None]
        >>> p = FullPredictor(f, torch.tensor([[0, 1, 4]], dtype=torch.uint8))
        >>> p.reference().flatten().tolist(), p.predict(torch.tensor([[0, 2, 3]])).flatten().tolist()
        ([2.0], [3.0])
    """

    def __init__(self, forward: Callable, ref_idx: torch.Tensor, dtype: torch.dtype = torch.float32,
                 check: bool = True):
        self.forward = forward
        self.ref_idx = ref_idx  # (B, L) uint8
        self.dtype = dtype
        self.check = check

    def reference(self) -> torch.Tensor:
        """Predictions of the unmutated sequences, (B, T, L_out)."""
        dev = self.ref_idx.device  # built there: no host-to-device copy
        eye = torch.cat([torch.eye(4, device=dev), torch.zeros(1, 4, device=dev)]).to(self.dtype)  # (5, 4)
        x = eye[self.ref_idx.long()].transpose(1, 2).contiguous()  # (B, 4, L)
        return self.forward(x)

    def predict(self, mutants: torch.Tensor) -> torch.Tensor:
        """Predictions (M, T, L_out) of the mutants (M, 3) = (seq, pos, base) rows."""
        if self.dtype in _MUTATE_DTYPES:
            return self.forward(ops.mutate(self.ref_idx, mutants, self.dtype, check=self.check))
        # float64 models: the native op writes float32; one-hot 0/1 converts exactly
        return self.forward(ops.mutate(self.ref_idx, mutants, torch.float32, check=self.check).to(self.dtype))


_MUTATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the native mutate op writes


def _parse_devices(devices: Any) -> List[torch.device]:
    """``devices`` as gReLU takes it ("cpu", an int, a list of ints) or torch devices/strings."""

    def one(d: Any) -> torch.device:
        if isinstance(d, bool):
            raise ValueError(f"devices: expected 'cpu', a CUDA index or a torch.device, got {d!r}")
        if isinstance(d, int):
            d = torch.device("cuda", d)
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError):
            raise ValueError(f"devices: expected 'cpu', a CUDA index or a torch.device, got {d!r}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"devices: {d!r} asks for CUDA, but no CUDA device is available")
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            if idx >= torch.cuda.device_count():
                raise ValueError(f"devices: CUDA index {idx} is out of range ({torch.cuda.device_count()} devices)")
            dev = torch.device("cuda", idx)
        return dev

    if isinstance(devices, (list, tuple)):
        if len(devices) == 0:
            raise ValueError("devices: the list of devices is empty")
        return [one(d) for d in devices]
    return [one(devices)]


def _check_positions(start_pos: Any, end_pos: Any, length: int) -> tuple:
    for name, v in (("start_pos", start_pos), ("end_pos", end_pos)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{name}: expected an integer position, got {v!r}")
    end = length if end_pos is None else int(end_pos)
    start = int(start_pos)
    if start < 0 or start >= length:
        raise ValueError(f"start_pos: {start} is outside the sequence (length {length}); expected 0 <= start_pos < {length}")
    if end <= start or end > length:
        raise ValueError(f"end_pos: {end} must satisfy start_pos ({start}) < end_pos <= sequence length ({length})")
    return start, end


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_dtype(dtype: Any, model: Any) -> None:
    """``dtype=`` must be one the model can compute in: its own parameter dtype, or float16 /
    bfloat16 under autocast for a float32, float16 or bfloat16 model. Autocast never raises
    precision (float32 on a bfloat16 model, float64 on a float32 one) nor lowers it from float64
    (it casts float32 only), so those are refused here, before any model call. A plain callable
    receives one-hot input in ``dtype`` and may take any floating dtype."""
    if dtype is None:
        return
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"dtype: expected torch.float32, float16, bfloat16 or float64, got {dtype!r}")
    if not isinstance(model, torch.nn.Module):
        return
    own = model_dtype(model)
    if dtype == own or (dtype in _LOW_PRECISION and own in (torch.float32,) + _LOW_PRECISION):
        return
    raise ValueError(
        f"dtype: the model computes in {own}; dtype={dtype} is not possible (autocast only lowers "
        f"float32 to float16/bfloat16). Use dtype=None, or convert the model first "
        f"(e.g. model.to({dtype}))"
    )


def _check_compare(compare_func: Any) -> None:
    if compare_func is None or callable(compare_func):
        return
    if isinstance(compare_func, str) and compare_func in COMPARE_FUNCS:
        return
    raise UnknownCompareError(
        f"compare_func: expected None, a callable or one of {list(COMPARE_FUNCS)} (case-sensitive), "
        f"got {compare_func!r}"
    )


def _estimated_full_seconds(forward: Callable, ref_idx: torch.Tensor, dtype: torch.dtype, n_mutants: int) -> float:
    """Upper estimate of a full-recompute run: one timed single-sequence forward per mutant."""
    import time

    predictor = FullPredictor(forward, ref_idx, dtype)
    with torch.inference_mode():
        t0 = time.perf_counter()
        predictor.reference()
        if ref_idx.device.type == "cuda":
            torch.cuda.synchronize(ref_idx.device)
        return (time.perf_counter() - t0) * n_mutants


def _make_predictor(engine: str, model: Any, forward: Callable, length: int, device: torch.device,
                    dtype: torch.dtype, prediction_transform: Optional[Callable], cached_only: bool = False,
                    batch_size: int = 64):
    """A factory ``ref_idx -> predictor`` for the chosen engine, and the engine's name.

    With ``engine="auto"`` a planner failure of any kind means the full path: the incremental
    engine is an optimisation and never a reason for a call to fail. ``cached_only`` uses a plan
    captured by an earlier call but never captures (small jobs). ``engine="auto"`` decides on the
    plan's timed probe of one ``batch_size`` batch each way (cached with the plan; measured here
    unless ``cached_only``), else on the static cost model (``IsmPlan.prefers_incremental``).
    """
    full = lambda ref_idx: FullPredictor(forward, ref_idx, dtype, check=False)  # noqa: E731
    if engine == "full":
        return full, "full"
    from .incremental import IncrementalPredictor, plan_ism

    try:
        plan = plan_ism(model, length, prediction_transform=prediction_transform, device=device, dtype=dtype,
                        cached_only=cached_only and engine == "auto")
    except Exception as err:  # noqa: BLE001 - any planner failure falls back to the full path
        if engine == "incremental":
            raise ValueError(f"engine: 'incremental' was requested but planning failed: {err}") from err
        return full, "full"
    if not plan.supported:
        if engine == "incremental":
            raise ValueError(f"engine: 'incremental' was requested but the model is not supported: {plan.reason}")
        return full, "full"
    if engine == "incremental" or plan.prefers_incremental(full, batch_size, measure=not cached_only):
        factory = lambda ref_idx: IncrementalPredictor(plan, ref_idx)  # noqa: E731
        factory.plan = plan  # type: ignore[attr-defined]
        return factory, "incremental"
    return full, "full"


def _spot_check(predictor, full_predictor, mutants: torch.Tensor, plan: Any, start: int, end: int,
                dtype: torch.dtype) -> Optional[str]:
    """The incremental engine's safety net: compare it with full recompute on real mutants.

    The mutants are every alternative base of the first sequence at the positions where the
    plan's rules change (:meth:`~basewise.incremental.IsmPlan.check_positions`: the range's ends,
    where substitutions stop being read, where window offsets stop following the position) and
    the middle: at most 8 positions, 24 forward passes. They agree when max |incremental - full|
    <= tol * max |full| with tol = 1e-4 in float32 (about 800 float32 ulps; the engines differ
    only by rounding, ~1e-6) and 8 machine epsilons in lower precision. Returns None when they
    agree, else a description.
    """
    if mutants.shape[0] == 0:
        return None
    positions = plan.check_positions(start, end) if plan is not None else [start, (start + end) // 2, end - 1]
    pos_t = torch.as_tensor(positions, dtype=mutants.dtype, device=mutants.device)
    first = mutants[:, 0] == mutants[0, 0]
    rows = mutants[first & torch.isin(mutants[:, 1], pos_t)]
    if rows.shape[0] == 0:
        return None
    a = predictor.predict(rows).float()
    b = full_predictor.predict(rows).float()
    tol = max(1e-4, 8 * torch.finfo(dtype).eps)
    scale = max(float(b.abs().max()), 1e-30)
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = (a - b).abs().masked_fill(both_nan | (a == b), 0.0)
    if not bool(torch.isfinite(diff).all()) or float(diff.max()) > tol * scale:
        worst = int(diff.flatten(1).amax(1).argmax())
        return (f"max |incremental - full| = {float(diff.max()):.3g} on an output scale of {scale:.3g} "
                f"at position {int(rows[worst, 1])}, base {'ACGT'[int(rows[worst, 2])]}")
    return None


def ISM_predict(
    seqs: Union[str, Sequence[str], np.ndarray, torch.Tensor, pd.DataFrame],
    model: Any,
    genome: Optional[Any] = None,
    prediction_transform: Optional[Callable] = None,
    start_pos: int = 0,
    end_pos: Optional[int] = None,
    compare_func: Optional[Union[str, Callable]] = None,
    devices: Union[str, int, Sequence[int], torch.device] = "cpu",
    num_workers: int = 1,
    batch_size: int = 64,
    return_df: bool = True,
    *,
    engine: str = "auto",
    progress: Optional[bool] = None,
    dtype: Optional[torch.dtype] = None,
) -> Union[pd.DataFrame, np.ndarray]:
    """Predict the effect of every single-base substitution (saturation in-silico mutagenesis).

    Same signature, defaults, shapes, ordering and numbers as gReLU 1.1.0's
    ``grelu.interpret.score.ISM_predict``; the differences are deliberate improvements: the
    reference is predicted once per sequence and only real substitutions are predicted (so an N
    at ``start_pos`` works with ``compare_func``), arguments are validated before any model call,
    no global state (matmul precision, files, stdout) is touched, and the caller's model keeps
    its transform, training mode and device.

    Args:
        seqs: a DNA string, list of strings, integer index array (L,) or (B, L), one-hot tensor or
            array (4, L) or (B, 4, L), or a DataFrame of intervals (chrom, start, end[, strand]).
        model: a gReLU LightningModel (duck-typed), any ``nn.Module`` or callable mapping (N, 4, L)
            one-hot to (N, T, L_out) or (N, T).
        genome: FASTA path, ``pyfaidx.Fasta`` or genomepy name, for interval input. Default None.
        prediction_transform: module applied to the model output (gReLU's ``add_transform``).
            Default None (a LightningModel keeps the transform it has).
        start_pos: first mutated position (0-based). Default 0.
        end_pos: end of the mutated range (exclusive); None means the sequence length.
            Default None.
        compare_func: None (raw predictions), "subtract", "divide", "log2FC" (case-sensitive), or
            a callable ``f(preds, ref)`` on numpy arrays (B, P, 4, T, L_out) and
            (B, 1, 1, T, L_out). Default None.
        devices: "cpu", a CUDA index, a list of CUDA indices, or torch device(s); with several,
            the mutant batches are shared between them. Default "cpu".
        num_workers: accepted for compatibility; mutants are generated on the device, so no
            DataLoader workers are used. Default 1.
        batch_size: mutants per forward pass. Default 64.
        return_df: return a DataFrame when there is one sequence and T = L_out = 1; otherwise
            the array with gReLU's UserWarning. Default True.
        engine: "auto", "incremental" (exact windowed recompute, see
            :func:`basewise.plan_ism`) or "full" (a full forward per mutant). Default "auto".
        progress: show a tqdm progress bar on stderr: None shows it for runs longer than about
            2 seconds, True always, False never; or a callable, called with the number of
            mutants each time a batch of them lands (to drive a progress display of your own,
            as the region runs do). Default None.
        dtype: dtype of the one-hot batches and of the model's computation: the model's own
            dtype, or float16/bfloat16 under autocast for a float32 (or half-precision) model;
            other combinations raise a ValueError before any model call. Results are float32.
            Default None (the model's parameter dtype).

    Returns:
        A DataFrame of shape (4, P) (rows A, C, G, T; columns the reference letters of
        ``seqs[start_pos:end_pos]``), or a float32 numpy array (B, P, 4, T, L_out) where
        ``out[b, p, a]`` is the prediction for base ``a`` at position ``start_pos + p``; the
        reference-base entries hold the unmutated prediction.

    Raises:
        ValueError: bad sequences, positions, devices, batch size or engine.
        UnknownCompareError: an unknown ``compare_func`` name (a ValueError and a
            NotImplementedError).

    Example:
        >>> import torch, basewise
        >>> conv = torch.nn.Conv1d(4, 1, 1, bias=False)
        >>> _ = conv.weight.data.copy_(torch.tensor([4.0, -2, 0, 0]).view(1, 4, 1))
        >>> model = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool1d(1))
        >>> basewise.ISM_predict("AA", model).loc["C"].tolist()
        [1.0, 1.0]
    """
    # ---- validation: everything is checked before the model is touched ----
    _check_compare(compare_func)
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not (model is not None and callable(model)):
        raise ValueError(f"model: expected a torch.nn.Module or callable, got {type(model).__name__}")
    if progress not in (None, True, False) and not callable(progress):
        raise ValueError(f"progress: expected None, True, False or a callable, got {progress!r}")
    _check_dtype(dtype, model)
    dev_list = _parse_devices(devices)
    ref_np = to_indices(seqs, genome)  # (B, L) int8
    n_seqs, length = ref_np.shape
    if n_seqs == 0:
        raise ValueError("seqs: no sequences were given")
    start, end = _check_positions(start_pos, end_pos, length)

    with preserved_model_state(model):
        if is_lightning_like(model) and prediction_transform is not None:
            from .attribution import _transform_module  # a lambda becomes a module it can hold

            model.add_transform(_transform_module(prediction_transform))
        eval_mode(model)
        replicas = _place_replicas(model, dev_list)
        compute_dtype = dtype or model_dtype(model)
        preds, ref_preds = _run(
            replicas, prediction_transform, ref_np, start, end, batch_size, engine, compute_dtype, progress
        )

    # ---- compare (in place, exactly gReLU's float32 formulas) ----
    if compare_func is not None:
        if isinstance(compare_func, str):
            messages = _numpy_style_warnings(preds, ref_preds, compare_func)
            ops.compare_(preds, ref_preds, compare_func)
            out = preds.numpy()
            for msg in messages:
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
        else:
            ref = ref_preds.numpy()[:, None, None]  # (B, 1, 1, T, L_out)
            out = compare_func(preds.numpy(), ref)
    else:
        out = preds.numpy()

    if return_df:
        if out.ndim == 5 and out.shape[0] == 1 and out.shape[3] == 1 and out.shape[4] == 1:
            letters = indices_to_strings(ref_np[0, start:end])[0]
            return pd.DataFrame(out[0, :, :, 0, 0].T, index=["A", "C", "G", "T"], columns=list(letters))
        warnings.warn(_DF_WARNING, UserWarning, stacklevel=2)
    return out


def _numpy_style_warnings(preds: torch.Tensor, ref: torch.Tensor, kind: str) -> List[str]:
    """The RuntimeWarnings numpy (hence gReLU) emits for ``mut / ref`` and ``log2(mut / ref)``,
    in numpy's order, found from the inputs before the in-place comparison.

    preds: (B, P, 4, T, L_out); ref: (B, T, L_out)."""
    if kind == "subtract":
        return []
    div0 = inval = log0 = logneg = False
    for b in range(preds.shape[0]):  # one sequence at a time: a temporary of one sequence's size
        p, r = preds[b], ref[b][None, None]  # (P, 4, T, L_out), (1, 1, T, L_out)
        zero = r == 0
        div0 = div0 or bool((zero & (p != 0) & torch.isfinite(p)).any())
        inval = inval or bool(((zero & (p == 0)) | (torch.isinf(p) & torch.isinf(r))).any())
        if kind == "log2FC":
            q = p / r
            log0 = log0 or bool((q == 0).any())
            logneg = logneg or bool((q < 0).any())
    out = []
    if div0:
        out.append("divide by zero encountered in divide")
    if inval:
        out.append("invalid value encountered in divide")
    if log0:
        out.append("divide by zero encountered in log2")
    if logneg:
        out.append("invalid value encountered in log2")
    return out


def _place_replicas(model: Any, dev_list: List[torch.device]) -> List[tuple]:
    """(device, model) pairs: the caller's model moved to the first device (restored later by
    preserved_model_state), deep copies on other devices."""
    import copy

    out = []
    for i, dev in enumerate(dev_list):
        if not isinstance(model, torch.nn.Module):
            out.append((dev, model))
            continue
        if i == 0 or dev == dev_list[0]:
            m = model
        else:
            m = copy.deepcopy(model)
        out.append((dev, m.to(dev)))
    return out


class _CallbackBar:
    """``progress=callable``: the bar's updates go to the caller's function."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def update(self, n: int) -> None:
        self.fn(int(n))

    def close(self) -> None:
        pass


def _run(replicas, prediction_transform, ref_np, start, end, batch_size, engine, dtype, progress):
    """Predict reference and mutants; returns preds (B, P, 4, T, L_out) and ref (B, T, L_out)."""
    n_seqs, length = ref_np.shape
    n_pos = end - start
    ref_all = torch.from_numpy(ref_np.view(np.uint8))  # (B, L) uint8, CPU
    if any(dev.type == "cuda" for dev, _ in replicas):
        ref_all = ref_all.pin_memory()  # inputs go to the GPU by asynchronous copies
    # Sequences are handled in chunks so that reference caches and mutant lists stay
    # O(batch_size): enough sequences to fill about one batch of mutants.
    chunk = max(1, batch_size // max(1, 3 * n_pos))
    n_mutants_total = int(3 * n_seqs * n_pos + int((ref_np[:, start:end] == 4).sum()))

    workers = []
    capture_ok = engine != "auto"
    for dev, m in replicas:
        fwd = make_forward(m, prediction_transform)
        m_dtype = dtype
        autocast = dtype != model_dtype(m) and isinstance(m, torch.nn.Module)
        if autocast:
            fwd = _autocast_forward(fwd, dev, dtype)
        if engine == "auto" and not workers:
            # Capturing a model for the incremental engine costs ~0.3-1 s; it only pays off when
            # full recompute would take longer. Estimate that from one timed reference forward,
            # unless a plan with a timed probe for this batch size is cached (nothing to capture
            # or measure: the estimate's forward would be pure overhead)
            from .incremental import plan_ism

            cached = plan_ism(m, length, prediction_transform=prediction_transform, device=dev, dtype=m_dtype,
                              cached_only=True)
            capture_ok = (cached.supported and cached.probe(batch_size) is not None
                          and cached.probe(batch_size).batch_size == batch_size) or \
                _estimated_full_seconds(fwd, ref_all[:1].to(dev), m_dtype, n_mutants_total) > 1.0
        factory, name = _make_predictor(engine, m, fwd, length, dev, m_dtype, prediction_transform,
                                        cached_only=not capture_ok, batch_size=batch_size)
        full_factory = lambda ref_idx, fwd=fwd: FullPredictor(fwd, ref_idx, m_dtype, check=False)  # noqa: E731
        workers.append([dev, factory, name, full_factory])

    from tqdm.auto import tqdm

    if callable(progress):
        bar = _CallbackBar(progress)
    else:
        bar = tqdm(
            total=n_mutants_total, unit="mut", file=sys.stderr, disable=progress is False,
            delay=0 if progress else 2.0, leave=False, dynamic_ncols=True, desc="ISM",
        )
    preds = None  # (B, P, 4, T, L_out) float32, allocated once the output shape is known
    ref_preds = None  # (B, T, L_out)
    lock = threading.Lock()
    pool = ThreadPoolExecutor(len(workers)) if len(workers) > 1 else None
    sinks = [_HostResults(w[0]) for w in workers]  # per device: results copied back asynchronously
    try:
        with torch.inference_mode():
            for b0 in range(0, n_seqs, chunk):
                b1 = min(n_seqs, b0 + chunk)
                ref_cpu = ref_all[b0:b1]
                predictors = [(w[0], w[1](_to_device(ref_cpu, w[0]))) for w in workers]
                mutants = ops.enumerate_mutants(ref_cpu, start, end)  # (m, 3) int64, CPU
                if b0 == 0 and engine == "auto" and workers[0][2] == "incremental":
                    # Safety net: the plan is verified on real mutants once per (plan, mutated
                    # range), the first time it is used for that range (its rules are structural:
                    # a later call with other sequences or weights meets the same rules); on
                    # disagreement the whole call uses full recompute.
                    dev0 = workers[0][0]
                    plan = getattr(workers[0][1], "plan", None)
                    verified = getattr(plan, "_verified", {}) if plan is not None else {}
                    if (start, end) in verified:
                        problem = verified[(start, end)]
                    else:
                        problem = _spot_check(predictors[0][1], workers[0][3](ref_cpu.to(dev0)),
                                              mutants.to(dev0), plan, start, end, dtype)
                        if plan is not None:
                            plan._verified = {**verified, (start, end): problem}
                    if problem is not None:
                        warnings.warn(f"basewise: the incremental ISM engine disagreed with full recompute "
                                      f"({problem}); using full recompute for this call. This is a "
                                      f"basewise bug: please report it with the model's "
                                      f"basewise.ism_plan_report(model, length).",
                                      RuntimeWarning, stacklevel=3)
                        for w in workers:
                            w[1], w[2] = w[3], "full"
                        predictors = [(w[0], w[1](_to_device(ref_cpu, w[0]))) for w in workers]
                ref_out = _native_float(predictors[0][1].reference())  # (b, T, L_out) on device 0
                if preds is None:
                    shape = tuple(ref_out.shape[1:])
                    preds = torch.empty((n_seqs, n_pos, 4) + shape, dtype=torch.float32)
                    ref_preds = torch.empty((n_seqs,) + shape, dtype=torch.float32)
                elif tuple(ref_out.shape[1:]) != tuple(preds.shape[3:]):
                    raise ValueError("model: output shape changed between sequences")
                out_view = preds[b0:b1]

                def land_reference(host: torch.Tensor, b0=b0, b1=b1, out_view=out_view, ref_cpu=ref_cpu) -> None:
                    ref_preds[b0:b1] = host
                    ops.fill_reference_(out_view, host, ref_cpu, start)

                sinks[0].submit(ref_out, land_reference)
                batches = [(i, min(i + batch_size, mutants.shape[0])) for i in range(0, mutants.shape[0], batch_size)]
                # the chunk's mutant list goes to each device once; batches are slices there
                mutants_dev = [_to_device(mutants, w[0]) for w in workers]

                def work(k: int, out_view=out_view, mutants=mutants, mutants_dev=mutants_dev, batches=batches) -> None:
                    """Device k's share of the chunk's batches (every len(workers)-th), in order:
                    launched without waiting; each result lands in preds when its copy is done."""
                    dev, predictor = predictors[k]
                    with torch.inference_mode():  # thread-local: worker threads need their own
                        for i0, i1 in batches[k::len(workers)]:
                            y = _native_float(predictor.predict(mutants_dev[k][i0:i1]))  # (n, T, L_out)
                            if tuple(y.shape[1:]) != tuple(preds.shape[3:]) or y.shape[0] != i1 - i0:
                                raise ValueError(
                                    f"model: mutant predictions have shape {tuple(y.shape)}, expected "
                                    f"({i1 - i0}, {', '.join(map(str, preds.shape[3:]))})"
                                )

                            def land(host: torch.Tensor, batch=mutants[i0:i1]) -> None:
                                with lock:
                                    ops.scatter_(out_view, host, batch, start)
                                    bar.update(batch.shape[0])

                            sinks[k].submit(y, land)

                if pool is None:
                    work(0)
                else:
                    for fut in [pool.submit(work, k) for k in range(len(workers))]:
                        fut.result()
            for sink in sinks:
                sink.drain()
    finally:
        for sink in sinks:
            sink.discard()
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
    return preds, ref_preds


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A CPU input on ``dev``: on CUDA by an asynchronous copy from pinned memory (no host wait)."""
    if dev.type != "cuda":
        return t.to(dev)
    return (t if t.is_pinned() else t.pin_memory()).to(dev, non_blocking=True)


def _native_float(y: torch.Tensor) -> torch.Tensor:
    """Predictions in a dtype the native ops read (float32/16, bfloat16): half-precision results
    travel to the host at their own size and are widened exactly there."""
    return y if y.dtype in ops.FLOAT_DTYPES else y.float()


class _HostResults:
    """Results of one device, brought to the host without stalling the device.

    On CUDA, :meth:`submit` queues an asynchronous copy of a result into a pinned host buffer and
    returns; the buffer's consumer runs once that copy is done, when the queue holds ``depth``
    results or at :meth:`drain`, so the host waits only for work ``depth`` batches old while the
    device keeps computing. The pinned buffers (``depth`` of them) are reused across batches. On
    the CPU the consumer runs at once.

    Example:
        >>> sink = _HostResults(torch.device("cpu"))
        >>> got = []
        >>> sink.submit(torch.ones(2), got.append); sink.drain(); got[0].tolist()
        [1.0, 1.0]
    """

    def __init__(self, device: torch.device, depth: int = 2):
        self.device = device
        self.depth = depth
        self._pending: collections.deque = collections.deque()  # (event, host view, buffer, consumer)
        self._free: List[torch.Tensor] = []  # pinned uint8 buffers

    def submit(self, y: torch.Tensor, consume: Callable[[torch.Tensor], None]) -> None:
        if self.device.type != "cuda":
            consume(y)
            return
        while len(self._pending) >= self.depth:
            self._finish_one()
        nbytes = y.numel() * y.element_size()
        buf = next((b for b in self._free if b.numel() >= nbytes), None)
        if buf is None:
            if self._free:
                self._free.pop()  # too small: replaced by a larger one
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        else:
            self._free.remove(buf)
        host = buf[:nbytes].view(y.dtype).view(y.shape)
        host.copy_(y, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._pending.append((event, host, buf, consume))

    def _finish_one(self) -> None:
        event, host, buf, consume = self._pending.popleft()
        event.synchronize()  # this result's copy (and the work before it) is done
        try:
            consume(host)
        finally:
            self._free.append(buf)

    def drain(self) -> None:
        """Run every pending consumer (waits for the device's queued copies)."""
        while self._pending:
            self._finish_one()

    def discard(self) -> None:
        """Forget pending results (after an error); waits for their copies to finish first."""
        while self._pending:
            event, _, buf, _ = self._pending.popleft()
            event.synchronize()
            self._free.append(buf)


def _autocast_forward(fwd: Callable, dev: torch.device, dtype: torch.dtype) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=dtype):
            return fwd(x)

    return forward
