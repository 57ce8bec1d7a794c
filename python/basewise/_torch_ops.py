"""Plain-PyTorch implementations of the native ops, used where the native kernels cannot run.

:mod:`basewise.ops` calls these instead of ``basewise._C`` on a CUDA tensor when basewise was built
without CUDA kernels, or without kernels for that GPU's architecture, or with a CUDA runtime the
driver cannot run (see :func:`basewise.ops.fallback_reason`), and on every device when
``basewise.ops.FORCE_TORCH_OPS`` is set (tests, debugging). They follow the native kernels'
contracts exactly, including on bad index values (rows with an out-of-range sequence, position or
base are skipped or zero-filled, never an out-of-bounds access or a device-side assert), and give
the same numbers bit for bit: the one-hot, copy and scatter ops move values unchanged,
``compare_`` uses IEEE float32 subtraction/division and a float64 ``log2`` rounded once to float32
(the native log2 is correctly rounded the same way), ``conv_delta_`` adds a float32 weight
difference and rounds once to the activation dtype.

None of them synchronises the host with a CUDA device, except ``enumerate_rows``, whose output
size depends on the data (the native CUDA op synchronises there too).

Shapes and conventions are those of :mod:`basewise.ops`: ``ref`` (B, L) uint8 base indices
(0-3 = A, C, G, T, anything else = N), ``mutants`` (M, 3) int64 rows (seq, pos, base).

Example:
    >>> import torch
    >>> from basewise import _torch_ops
    >>> ref = torch.tensor([[0, 1, 4]], dtype=torch.uint8)               # "ACN"
    >>> _torch_ops.mutate(ref, torch.tensor([[0, 2, 3]]), None, 3, torch.float32)[0, :, 2].tolist()
    [0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional

import torch

Tensor = torch.Tensor

_KINDS = ("subtract", "divide", "log2FC")


def enumerate_rows(ref: Tensor, start: int, end: int) -> Tensor:
    """(M, 3) int64 substitution rows of positions [start, end): 3 per position, 4 at an N."""
    B = ref.shape[0]
    sub = ref[:, start:end].long()  # (B, P)
    if B == 0 or end <= start:
        return torch.empty((0, 3), dtype=torch.int64, device=ref.device)
    bases = torch.arange(4, device=ref.device)  # (4,)
    keep = sub.unsqueeze(-1) != bases  # (B, P, 4); all four at an N (> 3)
    rows = keep.nonzero().contiguous()  # (M, 3) in (b, p, base) row-major order: gReLU's order
    rows[:, 1] += start
    return rows


def mutate(ref: Tensor, mutants: Tensor, offset: Optional[Tensor], width: int,
           dtype: torch.dtype) -> Tensor:
    """(M, 4, width) one-hot mutants; column j encodes position ``offset[m] + j`` (0 without
    offset), zero outside [0, L) and for invalid rows."""
    B, L = ref.shape
    M = mutants.shape[0]
    dev = ref.device
    if M == 0 or width == 0 or B == 0 or L == 0:
        return torch.zeros((M, 4, width), dtype=dtype, device=dev)
    seq, pos, base = mutants.unbind(1)  # (M,) each
    valid = (seq >= 0) & (seq < B) & (pos >= 0) & (pos < L) & (base >= 0) & (base < 4)  # (M,)
    cols = torch.arange(width, device=dev).expand(M, width)  # (M, W)
    if offset is not None:
        cols = offset.unsqueeze(1) + cols
    inside = (cols >= 0) & (cols < L) & valid.unsqueeze(1)  # (M, W)
    codes = ref[seq.clamp(0, B - 1).unsqueeze(1), cols.clamp(0, L - 1)]  # (M, W) uint8
    codes = torch.where(cols == pos.unsqueeze(1), base.clamp(0, 4).to(torch.uint8).unsqueeze(1), codes)
    codes = codes.masked_fill(~inside, 4)
    onehot = codes.unsqueeze(1) == torch.arange(4, dtype=torch.uint8, device=dev).view(1, 4, 1)  # (M, 4, W)
    return onehot.to(dtype)


def _in_place(fn: Callable) -> Callable:
    """In-place ops write through pointers natively, so they also accept inference tensors
    (ISM's outputs are made under torch.inference_mode) outside inference mode: do the same."""

    @functools.wraps(fn)
    def run(target: Tensor, *args, **kwargs):
        ctx = torch.inference_mode() if target.is_inference() else contextlib.nullcontext()
        with ctx:
            return fn(target, *args, **kwargs)

    return run


@_in_place
def compare_(preds: Tensor, ref: Tensor, kind: str) -> None:
    """In place on (B, P, 4, *S) float32 ``preds`` against (B, *S) float32 ``ref``."""
    B = preds.shape[0]
    if preds.numel() == 0:
        return
    p = preds.view(B, -1, ref[0].numel() if B else 1)  # (B, Q, S)
    r = ref.reshape(B, 1, -1)  # (B, 1, S)
    if kind == "subtract":
        p.sub_(r)
    elif kind == "divide":
        p.div_(r)
    elif kind == "log2FC":
        p.div_(r)
        p.copy_(torch.log2(p.double()))  # float64 log2, rounded once to float32
    else:  # pragma: no cover - the ops wrappers check kind
        raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")


def _write_slots(out: Tensor, slot: Tensor, valid: Tensor, values: Tensor) -> None:
    """``out`` viewed (N, S): ``out[slot[m]] = values[m]`` for valid rows, others skipped, with
    no host synchronisation. Every row writes its slot, an invalid one the value already there
    or (if a valid row shares the slot) that row's value, so no two writers of a slot disagree."""
    n = out.shape[0]
    M = slot.shape[0]
    slot = torch.where(valid, slot, torch.zeros_like(slot)).clamp(0, n - 1)  # (M,)
    rows = torch.arange(M, device=out.device)
    owner = torch.full((n,), -1, dtype=torch.int64, device=out.device)  # (N,) valid writer or -1
    owner.scatter_reduce_(0, slot, torch.where(valid, rows, -1), reduce="amax")
    src = owner[slot]  # (M,)
    vals = torch.where((src >= 0).unsqueeze(1), values[src.clamp(min=0)].to(out.dtype), out[slot])  # (M, S)
    out.index_put_((slot,), vals)


@_in_place
def scatter_(out: Tensor, values: Tensor, mutants: Tensor, start: int) -> None:
    """``out[seq, pos - start, base] = values[m]`` (float32) on (B, P, 4, *S) ``out``."""
    B, P = out.shape[0], out.shape[1]
    M = mutants.shape[0]
    if M == 0 or out.numel() == 0:
        return
    seq, pos, base = mutants.unbind(1)
    p = pos - start
    valid = (seq >= 0) & (seq < B) & (p >= 0) & (p < P) & (base >= 0) & (base <= 3)
    slot = (seq * P + p) * 4 + base
    _write_slots(out.view(B * P * 4, -1), slot, valid, values.reshape(M, -1))


@_in_place
def fill_reference_(out: Tensor, ref_preds: Tensor, ref: Tensor, start: int) -> None:
    """``out[b, p, ref[b, start + p]] = ref_preds[b]`` where that base is not N."""
    B, P = out.shape[0], out.shape[1]
    if out.numel() == 0:
        return
    r = ref[:, start:start + P].long()  # (B, P)
    valid = (r <= 3).reshape(-1)  # (B * P,)
    slot = torch.arange(B * P, device=out.device) * 4 + r.clamp(max=3).reshape(-1)
    rp = ref_preds.reshape(B, 1, -1).expand(B, P, -1).reshape(B * P, -1)  # (B * P, S)
    _write_slots(out.view(B * P * 4, -1), slot, valid, rp)


def gather_windows(x: Tensor, seq_idx: Tensor, offset: Tensor, width: int) -> Tensor:
    """(M, C, width): ``x[seq_idx[m], :, offset[m] + j]``, zero outside [0, Lx) and for bad rows."""
    B, C, Lx = x.shape
    M = seq_idx.shape[0]
    if M == 0 or width == 0 or B == 0 or Lx == 0 or C == 0:
        return torch.zeros((M, C, width), dtype=x.dtype, device=x.device)
    cols = offset.unsqueeze(1) + torch.arange(width, device=x.device)  # (M, W)
    ok = (cols >= 0) & (cols < Lx) & ((seq_idx >= 0) & (seq_idx < B)).unsqueeze(1)  # (M, W)
    g = x[seq_idx.clamp(0, B - 1).unsqueeze(1), :, cols.clamp(0, Lx - 1)]  # (M, W, C)
    return g.permute(0, 2, 1).masked_fill(~ok.unsqueeze(1), 0).contiguous()


def splice_windows(x: Tensor, seq_idx: Tensor, offset: Tensor, windows: Tensor) -> Tensor:
    """(M, C, Lx): ``x[seq_idx[m]]`` with columns ``offset[m] + j`` replaced by ``windows[m, :, j]``."""
    B, C, Lx = x.shape
    M, W = seq_idx.shape[0], windows.shape[2]
    if M == 0 or B == 0 or Lx == 0 or C == 0:
        return torch.zeros((M, C, Lx), dtype=x.dtype, device=x.device)
    valid = (seq_idx >= 0) & (seq_idx < B)  # (M,)
    out = x.index_select(0, seq_idx.clamp(0, B - 1))  # (M, C, Lx)
    if W > 0:
        j = torch.arange(Lx, device=x.device) - offset.unsqueeze(1)  # (M, Lx) window column
        in_win = (j >= 0) & (j < W)
        wv = windows.gather(2, j.clamp(0, W - 1).unsqueeze(1).expand(M, C, Lx))  # (M, C, Lx)
        out = torch.where(in_win.unsqueeze(1), wv, out)
    return out.masked_fill(~valid.view(M, 1, 1), 0)


@_in_place
def conv_delta_(pre: Tensor, weight: Tensor, mutants: Tensor, ref: Tensor, out_offset: Tensor,
                stride: int, padding: int, dilation: int) -> None:
    """In place on (M, Cout, W) ``pre``: add ``weight[:, base, t] - weight[:, old, t]`` (float32,
    rounded once to ``pre``'s dtype) at each tap's output column inside the window."""
    M, Cout, W = pre.shape
    K = weight.shape[2]
    B, L = ref.shape
    if M == 0 or Cout == 0 or W == 0 or K == 0 or B == 0 or L == 0:
        return
    seq, pos, base = mutants.unbind(1)
    valid = (seq >= 0) & (seq < B) & (pos >= 0) & (pos < L) & (base >= 0) & (base <= 3)  # (M,)
    pos_c = pos.clamp(0, L - 1)
    old = ref[seq.clamp(0, B - 1), pos_c].long()  # (M,) 0-3, or > 3 for N
    base_c = base.clamp(0, 3)
    acc = pre.float()  # (M, Cout, W); pre itself when float32
    rows = torch.arange(M, device=pre.device)
    for t in range(K):
        num = pos + padding - t * dilation  # (M,)
        j = torch.div(num, stride, rounding_mode="trunc") - out_offset
        ok = valid & (torch.remainder(num, stride) == 0) & (j >= 0) & (j < W)  # (M,)
        jc = j.clamp(0, W - 1)
        wt = weight[:, :, t].t()  # (4, Cout)
        d = wt[base_c] - torch.where((old < 4).unsqueeze(1), wt[old.clamp(max=3)], 0.0)  # (M, Cout)
        cur = acc[rows, :, jc]  # (M, Cout)
        acc[rows, :, jc] = torch.where(ok.unsqueeze(1), cur + d, cur)
    if acc is not pre:
        pre.copy_(acc)
