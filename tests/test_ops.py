"""Tests of the native ops (basewise.ops / torch.ops.basewise) against plain-PyTorch references.

Every op is compared with a straightforward PyTorch (or numpy) implementation written here, on
random inputs drawn by hypothesis (random B, L, P, window offsets overlapping both ends, N bases,
empty batches, dtypes), on every available device. Plus: torch.library.opcheck on every op, one
torch.compile(fullgraph=True) run, bad-input errors, and memory safety of the raw ops when the
Python checks are bypassed. CUDA cases run when a GPU is present and skip otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from basewise import _C, ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.build_info()["cuda"] else [])
HYP = settings(max_examples=30, deadline=None)

device_param = pytest.mark.parametrize("device", DEVICES)
dtype_param = pytest.mark.parametrize("dtype", DTYPES)


# ---------------------------------------------------------------------------------------------
# Plain-PyTorch references


def make_ref(gen: torch.Generator, B: int, L: int, n_frac: float, device: str,
             dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """(B, L) random bases with about n_frac of them N."""
    ref = torch.randint(0, 4, (B, L), generator=gen, dtype=torch.int64)
    ref[torch.rand((B, L), generator=gen) < n_frac] = 4
    return ref.to(dtype).to(device)


def ref_onehot(ref: torch.Tensor) -> torch.Tensor:
    """(B, L) indices -> (B, 4, L) float32 one-hot, N = all-zero column."""
    return F.one_hot(ref.long(), 5)[..., :4].permute(0, 2, 1).float()


def ref_enumerate(ref: torch.Tensor, start: int, end: int) -> torch.Tensor:
    rows = [(b, p, a) for b in range(ref.shape[0]) for p in range(start, end) for a in range(4)
            if a != int(ref[b, p])]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


def ref_mutate(ref: torch.Tensor, mutants: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    seq, pos, base = mutants.long().unbind(1)
    x = ref_onehot(ref)[seq].clone()  # (M, 4, L)
    rows = torch.arange(len(mutants), device=ref.device)
    x[rows, :, pos] = 0
    x[rows, base, pos] = 1
    return x.to(dtype)


def ref_mutate_window(ref, mutants, offset, width, dtype):
    full = ref_mutate(ref, mutants, torch.float32)  # (M, 4, L)
    return ref_gather(full, torch.arange(len(mutants), device=ref.device), offset, width).to(dtype)


def ref_gather(x: torch.Tensor, seq_idx: torch.Tensor, offset: torch.Tensor, width: int) -> torch.Tensor:
    M, (_, C, Lx) = len(seq_idx), x.shape
    cols = offset.view(M, 1) + torch.arange(width, device=x.device)  # (M, W)
    inside = (cols >= 0) & (cols < Lx)
    g = x[seq_idx.view(M, 1), :, cols.clamp(0, max(Lx - 1, 0))] if Lx else x.new_zeros(M, width, C)
    return (g * inside.unsqueeze(-1)).permute(0, 2, 1).contiguous()  # (M, C, W)


def ref_splice(x, seq_idx, offset, windows):
    out = x[seq_idx].clone()
    for m in range(len(seq_idx)):
        for j in range(windows.shape[2]):
            col = int(offset[m]) + j
            if 0 <= col < x.shape[2]:
                out[m, :, col] = windows[m, :, j]
    return out


def ref_compare(preds: torch.Tensor, ref: torch.Tensor, kind: str) -> np.ndarray:
    """gReLU's numpy float32 formulas."""
    p = preds.cpu().numpy()
    r = ref.cpu().numpy()[:, None, None]
    with np.errstate(all="ignore"):
        if kind == "subtract":
            return p - r
        if kind == "divide":
            return p / r
        return np.log2(p / r)


def ref_conv_delta(pre, weight, mutants, ref, out_offset, stride, padding, dilation):
    out = pre.float().clone()
    K = weight.shape[2]
    for m, (seq, pos, base) in enumerate(mutants.tolist()):
        old = int(ref[seq, pos])
        for t in range(K):
            num = pos + padding - t * dilation
            if num % stride:
                continue
            j = num // stride - int(out_offset[m])
            if 0 <= j < pre.shape[2]:
                d = weight[:, base, t] - (weight[:, old, t] if old < 4 else 0)
                out[m, :, j] += d
    return out.to(pre.dtype)


def assert_same_floats(actual: torch.Tensor, expected, rtol: float = 0.0):
    """Equal including inf/nan positions and the sign of zeros; values within rtol."""
    a = actual.detach().cpu().float().numpy()
    e = np.asarray(expected, dtype=np.float32)
    assert a.shape == e.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
    np.testing.assert_array_equal(np.isinf(a), np.isinf(e))
    fin = np.isfinite(e)
    np.testing.assert_array_equal(np.signbit(a[fin & (e == 0)]), np.signbit(e[fin & (e == 0)]))
    np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)])
    np.testing.assert_allclose(a[fin], e[fin], rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------------
# Strategies


@st.composite
def ref_case(draw, max_b=4, max_l=40, allow_empty_range=True):
    B = draw(st.integers(1, max_b))
    L = draw(st.integers(1, max_l))
    start = draw(st.integers(0, L))
    end = draw(st.integers(start if allow_empty_range else min(start + 1, L), L))
    if not allow_empty_range and end == start:
        start = max(0, end - 1)
    n_frac = draw(st.sampled_from([0.0, 0.2, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, L, start, end, n_frac, seed


def random_mutants(gen, B, L, M, device):
    seq = torch.randint(0, B, (M,), generator=gen)
    pos = torch.randint(0, L, (M,), generator=gen)
    base = torch.randint(0, 4, (M,), generator=gen)
    return torch.stack([seq, pos, base], 1).to(device)


# ---------------------------------------------------------------------------------------------
# enumerate / mutate / mutate_window


@device_param
@HYP
@given(case=ref_case(), int8=st.booleans())
def test_enumerate_matches_reference(device, case, int8):
    B, L, start, end, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, device, torch.int8 if int8 else torch.uint8)
    got = ops.enumerate_mutants(ref, start, end)
    assert got.device.type == device and got.dtype == torch.int64
    torch.testing.assert_close(got.cpu(), ref_enumerate(ref.cpu(), start, end), rtol=0, atol=0)


def test_enumerate_counts_and_order():
    ref = torch.tensor([[0, 4, 3], [2, 2, 1]], dtype=torch.uint8)
    got = ops.enumerate_mutants(ref, 1, 3)
    assert got.shape == (2 * 2 * 3 + 1, 3)  # one N: 4 rows instead of 3
    assert got[:4].tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 1, 3]]
    assert got[-3:].tolist() == [[1, 2, 0], [1, 2, 2], [1, 2, 3]]


@device_param
@HYP
@given(case=ref_case(), M=st.integers(0, 50), dtype=st.sampled_from(DTYPES))
def test_mutate_matches_reference(device, case, M, dtype):
    B, L, _, _, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, device)
    mutants = random_mutants(gen, B, L, M, device)
    got = ops.mutate(ref, mutants, dtype)
    assert got.shape == (M, 4, L) and got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got, ref_mutate(ref, mutants, dtype), rtol=0, atol=0)


@device_param
@HYP
@given(case=ref_case(), M=st.integers(0, 30), width=st.integers(0, 50),
       dtype=st.sampled_from(DTYPES))
def test_mutate_window_matches_reference(device, case, M, width, dtype):
    B, L, _, _, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, device)
    mutants = random_mutants(gen, B, L, M, device)
    # windows around the mutated position, overlapping either end (and some entirely outside)
    offset = (mutants[:, 1].cpu() - torch.randint(-3, width + 3, (M,), generator=gen)).to(device)
    got = ops.mutate_window(ref, mutants, offset, width, dtype)
    assert got.shape == (M, 4, width) and got.dtype == dtype
    torch.testing.assert_close(got, ref_mutate_window(ref, mutants, offset, width, dtype), rtol=0, atol=0)


@device_param
@dtype_param
def test_mutate_into_preallocated_out(device, dtype):
    gen = torch.Generator().manual_seed(1)
    ref = make_ref(gen, 3, 21, 0.2, device)
    mutants = random_mutants(gen, 3, 21, 11, device)
    out = torch.full((11, 4, 21), 9.0, dtype=dtype, device=device)
    assert ops.mutate(ref, mutants, dtype, out=out) is out
    torch.testing.assert_close(out, ref_mutate(ref, mutants, dtype), rtol=0, atol=0)
    offset = torch.randint(-8, 25, (11,), generator=gen).to(device)
    win = torch.full((11, 4, 6), 9.0, dtype=dtype, device=device)
    assert ops.mutate_window(ref, mutants, offset, 6, dtype, out=win) is win
    torch.testing.assert_close(win, ref_mutate_window(ref, mutants, offset, 6, dtype), rtol=0, atol=0)


def test_mutate_saturation_batch_equals_plain_onehot():
    gen = torch.Generator().manual_seed(3)
    ref = make_ref(gen, 2, 25, 0.1, "cpu")
    mutants = ops.enumerate_mutants(ref, 0, 25)
    x = ops.mutate(ref, mutants)
    # every mutant differs from its reference one-hot in exactly the mutated column
    diff = (x != ref_onehot(ref)[mutants[:, 0]]).any(1)  # (M, L)
    assert torch.equal(diff.nonzero()[:, 1], mutants[:, 1])


# ---------------------------------------------------------------------------------------------
# compare_ / scatter_ / fill_reference_


SPECIALS = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.5, -3.0, float("inf"), float("-inf"), float("nan"),
                         1e-38, 3e38])


@device_param
@HYP
@given(B=st.integers(0, 3), P=st.integers(0, 5), S=st.sampled_from([(), (1,), (3,), (2, 3)]),
       kind=st.sampled_from(list(ops.COMPARE_KINDS)), seed=st.integers(0, 2**31 - 1),
       specials=st.booleans())
def test_compare_matches_numpy(device, B, P, S, kind, seed, specials):
    gen = torch.Generator().manual_seed(seed)
    preds = torch.randn((B, P, 4) + S, generator=gen)
    ref = torch.randn((B,) + S, generator=gen)
    if specials:  # zeros, signed zeros, inf, nan, extremes on both sides
        preds = SPECIALS[torch.randint(0, len(SPECIALS), preds.shape, generator=gen)]
        ref = SPECIALS[torch.randint(0, len(SPECIALS), ref.shape, generator=gen)]
    expected = ref_compare(preds, ref, kind)
    preds, ref = preds.to(device), ref.to(device)
    assert ops.compare_(preds, ref, kind) is None
    # subtract and divide are exact IEEE float32; log2 within 1 ulp-ish of numpy
    assert_same_floats(preds, expected, rtol=0 if kind != "log2FC" else 2e-7)


@device_param
def test_log2fc_is_correctly_rounded(device):
    """log2FC = float32 ratio, then log2 correctly rounded (numpy's own SIMD log2 may be 1 ulp off)."""
    gen = torch.Generator().manual_seed(5)
    preds = torch.randn(3, 500, 4, 7, generator=gen) * 10.0 ** torch.randint(-30, 30, (3, 500, 4, 7), generator=gen).float()
    ref = torch.randn(3, 7, generator=gen).abs() + 1e-3
    ratio = (preds / ref.view(3, 1, 1, 7)).numpy()
    with np.errstate(all="ignore"):
        want = np.log2(ratio.astype(np.float64)).astype(np.float32)
    got = preds.to(device)
    ops.compare_(got, ref.to(device), "log2FC")
    assert_same_floats(got, want, rtol=0)


def test_compare_grelu_worked_examples():
    # spec 2.6: CCC with log2FC gives [-inf, 0, -0.585, -0.585]; with divide [-0.0, 1, 0.667, 0.667]
    preds = torch.tensor([0.0, -2.0, -4 / 3, -4 / 3]).view(1, 1, 4)
    p = preds.clone()
    ops.compare_(p, torch.tensor([-2.0]), "log2FC")
    assert_same_floats(p.flatten(), [float("-inf"), 0.0, -0.5849625, -0.5849625], rtol=1e-6)
    p = preds.clone()
    ops.compare_(p, torch.tensor([-2.0]), "divide")
    assert_same_floats(p.flatten(), [-0.0, 1.0, 0.6666667, 0.6666667], rtol=1e-6)


@device_param
@HYP
@given(case=ref_case(allow_empty_range=False), S=st.sampled_from([(), (2,), (2, 3)]),
       dtype=st.sampled_from(DTYPES), frac=st.floats(0, 1))
def test_scatter_and_fill_reference_build_ism_output(device, case, S, dtype, frac):
    B, L, start, end, n_frac, seed = case
    P = end - start
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, device)
    mutants = ops.enumerate_mutants(ref, start, end)
    keep = torch.rand(len(mutants), generator=gen) < frac  # a random subset, also empty
    mutants = mutants[keep.to(device)]
    values = torch.randn((len(mutants),) + S, generator=gen).to(dtype).to(device)
    ref_preds = torch.randn((B,) + S, generator=gen).to(dtype).to(device)
    out = torch.full((B, P, 4) + S, -7.0, device=device)
    expected = out.clone()
    seq, pos, base = mutants.unbind(1)
    expected[seq, pos - start, base] = values.float()
    ops.scatter_(out, values, mutants, start)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for b in range(B):
        for p in range(P):
            r = int(ref[b, start + p])
            if r < 4:
                expected[b, p, r] = ref_preds[b].float()
    ops.fill_reference_(out, ref_preds, ref, start)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_scatter_converts_half_exactly():
    v = torch.tensor([1e-7, 65504.0, -0.0, float("inf"), float("nan"), 0.333], dtype=torch.float16)
    out = torch.zeros(1, len(v), 4)
    mut = torch.tensor([[0, p, 1] for p in range(len(v))])
    ops.scatter_(out, v, mut, 0)
    assert_same_floats(out[0, :, 1], v.float().numpy())
    vb = v.float().to(torch.bfloat16)
    ops.scatter_(out, vb, mut, 0)
    assert_same_floats(out[0, :, 1], vb.float().numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_native_float32_rounding_matches_torch(dtype):
    """conv_delta_ rounds float32 to float16/bfloat16 in native code: bit-exact with torch."""
    gen = torch.Generator().manual_seed(0)
    vals = torch.cat([
        torch.randn(20000, generator=gen) * 10.0 ** torch.randint(-9, 6, (20000,), generator=gen).float(),
        torch.randint(-2**31, 2**31 - 1, (20000,), generator=gen, dtype=torch.int64).to(torch.int32).view(torch.float32),
        torch.tensor([65504.0, 65519.99, 65520.0, 1e-8, 2.98e-8, 2.9802322e-8, 5.96e-8, 6.1e-5,
                      3.4e38, -0.0, float("inf"), float("nan")]),
    ])
    N = len(vals)
    weight = torch.zeros(N, 4, 1)
    weight[:, 1, 0] = vals  # delta of A -> C is exactly vals
    pre = torch.full((1, N, 1), -0.0, dtype=dtype)  # -0.0 + v == v for every v
    ref = torch.zeros(1, 1, dtype=torch.uint8)
    ops.conv_delta_(pre, weight, torch.tensor([[0, 0, 1]]), ref, torch.zeros(1, dtype=torch.int64), 1, 0, 1)
    got, want = pre.view(-1), vals.to(dtype)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


# ---------------------------------------------------------------------------------------------
# window ops


@device_param
@HYP
@given(B=st.integers(1, 3), C=st.integers(1, 5), Lx=st.integers(1, 30), M=st.integers(0, 12),
       width=st.integers(0, 35), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_gather_and_splice_windows(device, B, C, Lx, M, width, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, Lx, generator=gen).to(dtype).to(device)
    seq_idx = torch.randint(0, B, (M,), generator=gen).to(device)
    offset = torch.randint(-width - 2, Lx + 2, (M,), generator=gen).to(device)
    got = ops.gather_windows(x, seq_idx, offset, width)
    assert got.shape == (M, C, width) and got.dtype == dtype
    torch.testing.assert_close(got, ref_gather(x, seq_idx, offset, width), rtol=0, atol=0)
    windows = torch.randn(M, C, width, generator=gen).to(dtype).to(device)
    spliced = ops.splice_windows(x, seq_idx, offset, windows)
    assert spliced.shape == (M, C, Lx)
    torch.testing.assert_close(spliced, ref_splice(x, seq_idx, offset, windows), rtol=0, atol=0)
    # splicing a gathered window back gives the row unchanged
    torch.testing.assert_close(ops.splice_windows(x, seq_idx, offset, got), x[seq_idx], rtol=0, atol=0)


@device_param
@HYP
@given(case=ref_case(max_l=30), Cout=st.integers(1, 4), K=st.integers(1, 6), stride=st.integers(1, 3),
       dilation=st.integers(1, 3), pad=st.integers(0, 6), W=st.integers(1, 12),
       dtype=st.sampled_from(DTYPES))
def test_conv_delta_matches_reference_and_real_convolution(device, case, Cout, K, stride, dilation,
                                                           pad, W, dtype):
    B, L, start, end, n_frac, seed = case
    if end == start:
        start, end = 0, L
    pad = max(pad, (dilation * (K - 1) + 1 - L + 1) // 2)  # the convolution has >= 1 output
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, device)
    mutants = ops.enumerate_mutants(ref, start, end)
    M = len(mutants)
    weight = torch.randn(Cout, 4, K, generator=gen).to(device)
    bias = torch.randn(Cout, generator=gen).to(device)
    conv = lambda x: F.conv1d(x.double(), weight.double(), bias.double(), stride, pad, dilation)
    y_ref = conv(ref_onehot(ref))  # (B, Cout, Lout)
    # window of W output columns around each mutant's first affected output
    out_offset = ((mutants[:, 1] + pad) // stride - W // 2).to(device)
    pre = ref_gather(y_ref.float(), mutants[:, 0], out_offset, W).to(dtype)  # (M, Cout, W)
    expected = ref_conv_delta(pre.cpu(), weight.cpu(), mutants.cpu(), ref.cpu(), out_offset.cpu(),
                              stride, pad, dilation)
    ops.conv_delta_(pre, weight, mutants, ref, out_offset, stride, pad, dilation)
    torch.testing.assert_close(pre.cpu(), expected, rtol=0, atol=0)
    # meaning: inside the real output range, the updated window is the mutant's convolution
    if dtype == torch.float32 and M:
        y_mut = conv(ref_mutate(ref, mutants, torch.float32))  # (M, Cout, Lout)
        want = ref_gather(y_mut.float(), torch.arange(M, device=device), out_offset, W)
        cols = out_offset.view(M, 1) + torch.arange(W, device=device)
        inside = ((cols >= 0) & (cols < y_ref.shape[2])).unsqueeze(1).expand_as(pre)
        torch.testing.assert_close(pre[inside], want[inside], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    ref = make_ref(gen, 3, 17, 0.2, device)
    mut = ops.enumerate_mutants(ref, 2, 9)
    M = len(mut)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=gen).to(dtype).to(device)
    i = lambda lo, hi, *s: torch.randint(lo, hi, s, generator=gen).to(device)
    return [
        ("enumerate", (ref, 2, 9)),
        ("enumerate", (ref, 4, 4)),
        ("mutate", (ref, mut, torch.float16)),
        ("mutate", (ref, mut[:0], torch.float32)),
        ("mutate_window", (ref, mut, i(-5, 20, M), 7, torch.bfloat16)),
        ("mutate_into", (torch.empty(M, 4, 17, device=device), ref, mut, None)),
        ("mutate_into", (torch.empty(M, 4, 5, dtype=torch.float16, device=device), ref, mut, i(-5, 20, M))),
        ("compare_", (r(3, 7, 4, 2, 5), r(3, 2, 5), "log2FC")),
        ("compare_", (r(3, 7, 4), r(3), "subtract")),
        ("scatter_", (torch.zeros(3, 7, 4, 2, device=device), r(M, 2, dtype=torch.bfloat16), mut, 2)),
        ("fill_reference_", (torch.zeros(3, 7, 4, 2, device=device), r(3, 2), ref, 2)),
        ("gather_windows", (r(3, 5, 11, dtype=torch.float16), i(0, 3, 4), i(-8, 12, 4), 6)),
        ("splice_windows", (r(3, 5, 11), i(0, 3, 4), i(-8, 12, 4), r(4, 5, 6))),
        ("conv_delta_", (r(M, 5, 6), r(5, 4, 3), mut, ref, i(-2, 10, M), 1, 1, 2)),
    ]


@device_param
def test_opcheck_every_op(device):
    samples = _opcheck_samples(device)
    names = {n for n, _ in samples}
    registered = {n for n in dir(torch.ops.basewise) if not n.startswith("_") and n != "name"}
    assert names == registered
    for name, args in samples:
        torch.library.opcheck(getattr(torch.ops.basewise, name), args)


def _pipeline(ref, preds_scale):
    """Saturation ISM bookkeeping of a toy model (sum of channel-weighted one-hot)."""
    mut = ops.enumerate_mutants(ref, 1, 5)
    x = ops.mutate(ref, mut, torch.float32)  # (M, 4, L)
    vals = (x * preds_scale.view(1, 4, 1)).sum((1, 2))  # (M,)
    refp = (ref_onehot(ref) * preds_scale.view(1, 4, 1)).sum((1, 2))  # (B,)
    out = torch.empty(ref.shape[0], 4, 4)  # (B, P, 4)
    ops.scatter_(out, vals, mut, 1)
    ops.fill_reference_(out, refp, ref, 1)
    ops.compare_(out, refp, "subtract")
    win = ops.gather_windows(x, mut[:, 0] * 0 + torch.arange(len(mut)), mut[:, 1] - 1, 3)
    return out, ops.mutate_window(ref, mut, mut[:, 1] - 1, 3), win


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    ref = torch.tensor([[0, 1, 2, 3, 4, 0], [3, 3, 2, 1, 0, 4]], dtype=torch.uint8)
    scale = torch.tensor([4.0, -2.0, 0.5, 0.0])
    eager = _pipeline(ref, scale)
    compiled = torch.compile(_pipeline, fullgraph=True)(ref, scale)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the reference slot compares to exactly 0; at the N (p = 3) every base is a real substitution
    assert eager[0][0, 0, 1].item() == 0 and (eager[0][0, 3, :3] != 0).all()


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, before native code


def _bad_cases():
    ref = torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8)
    mut = torch.tensor([[0, 1, 2]])
    out = torch.zeros(1, 4, 4)
    x = torch.zeros(1, 2, 4)
    idx = torch.tensor([0])
    return [
        ("ref", lambda: ops.enumerate_mutants(ref.long(), 0, 4)),
        ("ref", lambda: ops.enumerate_mutants(ref[0], 0, 4)),
        ("ref", lambda: ops.enumerate_mutants(torch.tensor([[0, 5]], dtype=torch.uint8), 0, 2)),
        ("ref", lambda: ops.enumerate_mutants(torch.tensor([[0, -1]], dtype=torch.int8), 0, 2)),
        ("start", lambda: ops.enumerate_mutants(ref, -1, 2)),
        ("end", lambda: ops.enumerate_mutants(ref, 0, 5)),
        ("end", lambda: ops.enumerate_mutants(ref, 3, 2)),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([[0, 4, 1]]))),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([[1, 0, 1]]))),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([[0, 0, 4]]))),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([[0, 0, -1]]))),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([[0.0, 0, 1]]))),
        ("mutants", lambda: ops.mutate(ref, torch.tensor([0, 0, 1]))),
        ("dtype", lambda: ops.mutate(ref, mut, torch.float64)),
        ("ref", lambda: ops.mutate(torch.tensor([[0, 9, 1, 1]], dtype=torch.uint8), mut)),
        ("offset", lambda: ops.mutate_window(ref, mut, torch.tensor([0, 1]), 3)),
        ("out", lambda: ops.mutate(ref, mut, out=torch.empty(1, 4, 3))),
        ("out", lambda: ops.mutate(ref, mut, out=torch.empty(1, 4, 4, dtype=torch.float16))),
        ("out", lambda: ops.mutate(ref, mut, out=torch.empty(1, 4, 8)[:, :, ::2])),
        ("out", lambda: ops.mutate_window(ref, mut, idx, 3, out=torch.empty(1, 4, 4))),
        ("width", lambda: ops.mutate_window(ref, mut, idx, -1)),
        ("preds", lambda: ops.compare_(out.double(), torch.zeros(1), "divide")),
        ("preds", lambda: ops.compare_(torch.zeros(1, 4, 3), torch.zeros(1), "divide")),
        ("preds", lambda: ops.compare_(torch.zeros(1, 4, 2, 4).transpose(1, 2), torch.zeros(1, 4), "divide")),
        ("ref", lambda: ops.compare_(out, torch.zeros(2), "divide")),
        ("kind", lambda: ops.compare_(out, torch.zeros(1), "log2fc")),
        ("values", lambda: ops.scatter_(out, torch.zeros(2), mut, 0)),
        ("values", lambda: ops.scatter_(out, torch.zeros(1, dtype=torch.int32), mut, 0)),
        ("mutants", lambda: ops.scatter_(out, torch.zeros(1), mut, 2)),  # pos 1 < start 2
        ("mutants", lambda: ops.scatter_(out, torch.zeros(1), torch.tensor([[0, 5, 0]]), 0)),
        ("out", lambda: ops.scatter_(torch.zeros(1, 4, 3), torch.zeros(1), mut, 0)),
        ("start", lambda: ops.fill_reference_(out, torch.zeros(1), ref, 1)),
        ("ref", lambda: ops.fill_reference_(out, torch.zeros(1), torch.zeros(2, 4, dtype=torch.uint8), 0)),
        ("ref_preds", lambda: ops.fill_reference_(out, torch.zeros(1, 2), ref, 0)),
        ("x", lambda: ops.gather_windows(torch.zeros(2, 4), idx, idx, 2)),
        ("x", lambda: ops.gather_windows(x.double(), idx, idx, 2)),
        ("seq_idx", lambda: ops.gather_windows(x, torch.tensor([1]), idx, 2)),
        ("offset", lambda: ops.gather_windows(x, idx, torch.tensor([0, 0]), 2)),
        ("width", lambda: ops.gather_windows(x, idx, idx, -2)),
        ("windows", lambda: ops.splice_windows(x, idx, idx, torch.zeros(1, 3, 2))),
        ("windows", lambda: ops.splice_windows(x, idx, idx, torch.zeros(1, 2, 2, dtype=torch.float16))),
        ("seq_idx", lambda: ops.splice_windows(x, torch.tensor([-1]), idx, torch.zeros(1, 2, 2))),
        ("weight", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(3, 4, 2), mut, ref, idx, 1, 0, 1)),
        ("pre", lambda: ops.conv_delta_(torch.zeros(1, 2, 3).transpose(1, 2), torch.zeros(3, 4, 2), mut, ref, idx, 1, 0, 1)),
        ("stride", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(2, 4, 2), mut, ref, idx, 0, 0, 1)),
        ("dilation", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(2, 4, 2), mut, ref, idx, 1, 0, 0)),
        ("padding", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(2, 4, 2), mut, ref, idx, 1, -1, 1)),
        ("mutants", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(2, 4, 2), torch.tensor([[0, 9, 1]]), ref, idx, 1, 0, 1)),
        ("out_offset", lambda: ops.conv_delta_(torch.zeros(1, 2, 3), torch.zeros(2, 4, 2), mut, ref, idx.float(), 1, 0, 1)),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_input_raises_value_error_naming_argument(i):
    arg, call = _bad_cases()[i]
    with pytest.raises(ValueError, match=rf"^{arg} "):
        call()


@pytest.mark.skipif(not DEVICES[1:], reason="needs CUDA")
def test_mixed_devices_rejected():
    ref = torch.tensor([[0, 1]], dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="^mutants "):
        ops.mutate(ref, torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match="^ref "):
        ops.compare_(torch.zeros(1, 1, 4, device="cuda"), torch.zeros(1), "divide")


def test_wrong_device_rejected_on_cpu():
    ref = torch.tensor([[0, 1]], dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="^mutants "):
        ops.mutate(ref, torch.tensor([[0, 0, 1]]))


@device_param
def test_raw_ops_are_memory_safe_with_bad_indices(device):
    """Bypassing the wrappers' value checks never reads or writes out of bounds."""
    ref = torch.tensor([[0, 1, 2, 200], [4, 3, 2, 1]], dtype=torch.uint8, device=device)  # 200 -> N
    big = 2**40
    bad = torch.tensor([[0, 1, 3], [5, 0, 0], [-1, 0, 0], [0, big, 0], [0, -3, 0], [0, 0, 9],
                        [1, 0, -2]], device=device)
    x = torch.ops.basewise.mutate(ref, bad, torch.float32)
    assert x[1:].abs().sum() == 0  # invalid rows zero-filled
    assert x[0, :, 3].abs().sum() == 0 and x[0, 3, 1] == 1  # 200 read as N; mutation applied
    w = torch.ops.basewise.mutate_window(ref, bad, torch.tensor([-big, big, 0, 0, 0, 0, 0], device=device), 3,
                                         torch.float16)
    assert w.abs().sum() == 0
    out = torch.zeros(2, 2, 4, 3, device=device)
    sentinel = torch.full((8, 3), 5.0, device=device)  # memory after `out` in one allocation
    buf = torch.cat([out.reshape(-1, 3), sentinel])
    view = buf[: 2 * 2 * 4].view(2, 2, 4, 3)
    torch.ops.basewise.scatter_(view, torch.ones(7, 3, device=device), bad, 0)
    torch.ops.basewise.fill_reference_(view, torch.ones(2, 3, device=device), ref, 2)
    torch.ops.basewise.conv_delta_(torch.zeros(7, 2, 3, device=device), torch.ones(2, 4, 2, device=device),
                                   bad, ref, torch.zeros(7, dtype=torch.int64, device=device), 1, 0, 1)
    assert torch.equal(buf[2 * 2 * 4:], sentinel)
    assert view[0, 1, 3].sum() == 3  # the one valid scatter row (seq 0, pos 1, base 3)
    assert view[0, 0, 2].sum() == 3  # fill_reference: ref[0, 2] = G
    assert view[0, 1].sum() == 3  # ref[0, 3] = 200 is treated as N: no reference slot
    g = torch.ops.basewise.gather_windows(torch.ones(2, 2, 4, device=device),
                                          torch.tensor([7, -1, 1], device=device),
                                          torch.tensor([0, 0, big], device=device), 3)
    assert g.abs().sum() == 0
    s = torch.ops.basewise.splice_windows(torch.ones(2, 2, 4, device=device), torch.tensor([9, 1], device=device),
                                          torch.tensor([0, -big], device=device), torch.zeros(2, 2, 3, device=device))
    assert s[0].abs().sum() == 0 and torch.equal(s[1], torch.ones(2, 4, device=device))


def test_native_boundary_rejects_structural_nonsense():
    with pytest.raises(ValueError, match="'B'"):
        _C.mutate(-1, 0, 0, -1, 4, 0, 0, 0, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="'out'"):
        _C.mutate(-1, 0, 1, 1, 4, 1, 1, 0, 4, 0, 0, 1)  # null output pointer for a non-empty out
    with pytest.raises(ValueError, match="'kind'"):
        _C.compare(-1, 0, 0, 0, 0, 0, 0, 7, 1)
    with pytest.raises(ValueError, match="'dtype'"):
        _C.mutate(-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1)


def test_build_info_reports_features():
    info = ops.build_info()
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["version"] and info["torch"] == torch.__version__
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_runtime_version"] > 0


@pytest.mark.skipif(not DEVICES[1:], reason="needs CUDA")
def test_cuda_ops_run_on_current_stream():
    ref = torch.randint(0, 5, (2, 50), dtype=torch.uint8, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        mut = ops.enumerate_mutants(ref, 0, 50)
        x = ops.mutate(ref, mut)
    s.synchronize()
    torch.testing.assert_close(x, ref_mutate(ref, mut, torch.float32), rtol=0, atol=0)
