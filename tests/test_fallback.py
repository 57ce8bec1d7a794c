"""The plain-PyTorch fallback of every native op (basewise._torch_ops), forced on the CPU.

GPU users whose basewise has no CUDA kernels for their GPU get these implementations instead of a
crash. They must give the same numbers as the native kernels bit for bit, follow the same contract
on bad index values, pass opcheck and torch.compile, run ISM end to end, and warn exactly once.
Here the fallback is forced on the CPU (``ops.FORCE_TORCH_OPS``, or ``ops.fallback_reason``
replaced to simulate a device without kernels) and compared with the native CPU kernels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import basewise
from basewise import _torch_ops, ops

from test_ops import _opcheck_samples, make_ref
from test_ops import test_log2fc_is_correctly_rounded as _log2fc_check  # (aliases: not collected here)
from test_ops import test_raw_ops_are_memory_safe_with_bad_indices as _memory_safety_check

HYP = settings(max_examples=25, deadline=None)


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(ops, "FORCE_TORCH_OPS", True)


def both(fn):
    """fn() with the native kernels, then with the fallback forced (fresh inputs each time)."""
    native = fn()
    old = ops.FORCE_TORCH_OPS
    ops.FORCE_TORCH_OPS = True
    try:
        fallback = fn()
    finally:
        ops.FORCE_TORCH_OPS = old
    return native, fallback


def bits_equal(a, b):
    """Same shape, dtype and bit pattern (NaNs compared as NaNs)."""
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert x.shape == y.shape and x.dtype == y.dtype
        if x.is_floating_point():
            nan = torch.isnan(x)
            assert torch.equal(nan, torch.isnan(y))
            ints = {2: torch.int16, 4: torch.int32}[x.element_size()]
            assert torch.equal(x.masked_fill(nan, 0).view(ints), y.masked_fill(nan, 0).view(ints))
        else:
            assert torch.equal(x, y)


def bad_rows(gen, B, L, M):
    """(M, 3) mutants, about a third of them out of range in some column."""
    mut = torch.stack([torch.randint(-1, B + 1, (M,), generator=gen), torch.randint(-2, L + 2, (M,), generator=gen),
                       torch.randint(-1, 5, (M,), generator=gen)], 1)
    return mut


cases = st.tuples(st.integers(1, 4), st.integers(1, 30), st.integers(0, 40), st.sampled_from([0.0, 0.3]),
                  st.integers(0, 2**31 - 1))
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@HYP
@given(case=cases, dtype=dtypes)
def test_mutate_ops_match_native(case, dtype):
    B, L, M, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, "cpu")
    mut = bad_rows(gen, B, L, M)
    off = torch.randint(-L - 3, L + 3, (M,), generator=gen)
    W = int(torch.randint(0, L + 4, (), generator=gen))
    bits_equal(*both(lambda: torch.ops.basewise.mutate(ref, mut, dtype)))
    bits_equal(*both(lambda: torch.ops.basewise.mutate_window(ref, mut, off, W, dtype)))
    bits_equal(*both(lambda: ops.mutate(ref, mut.clamp(0, 0), dtype, out=torch.full((M, 4, L), 7.0, dtype=dtype))))
    start = int(torch.randint(0, L + 1, (), generator=gen))
    bits_equal(*both(lambda: ops.enumerate_mutants(ref, start, L)))


@HYP
@given(case=cases, S=st.sampled_from([(), (1,), (3, 2)]), dtype=dtypes, kind=st.sampled_from(list(ops.COMPARE_KINDS)))
def test_output_ops_match_native(case, S, dtype, kind):
    B, L, M, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, "cpu")
    start = int(torch.randint(0, L, (), generator=gen))
    P = L - start
    mut = bad_rows(gen, B, L, M)
    mut = mut[torch.randperm(M, generator=gen)]
    vals = (torch.randn((M,) + S, generator=gen) * 100).to(dtype)
    vals[vals.abs() < 5] = float("nan")
    refp = torch.randn((B,) + S, generator=gen).to(dtype)
    init = torch.randn((B, P, 4) + S, generator=gen)

    def run():
        out = init.clone()
        # unique slots among the valid rows (duplicates are unspecified in both implementations)
        m = mut[torch.unique((mut[:, 0] * 1000 + mut[:, 1]) * 8 + mut[:, 2], return_inverse=True)[1].unique()]
        torch.ops.basewise.scatter_(out, vals[: len(m)], m, start)
        torch.ops.basewise.fill_reference_(out, refp, ref, start)
        cmp = out.clone()
        cmp[0, 0, 0].fill_(0.0)
        ops.compare_(cmp, refp.float(), kind)
        return out, cmp

    bits_equal(*both(run))


@HYP
@given(case=cases, C=st.integers(1, 5), dtype=dtypes)
def test_window_ops_match_native(case, C, dtype):
    B, Lx, M, _, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, Lx, generator=gen).to(dtype)
    seq = torch.randint(-1, B + 1, (M,), generator=gen)
    off = torch.randint(-Lx - 2, Lx + 2, (M,), generator=gen)
    W = int(torch.randint(0, Lx + 3, (), generator=gen))
    win = torch.randn(M, C, W, generator=gen).to(dtype)
    bits_equal(*both(lambda: torch.ops.basewise.gather_windows(x, seq, off, W)))
    bits_equal(*both(lambda: torch.ops.basewise.splice_windows(x, seq, off, win)))


@HYP
@given(case=cases, Cout=st.integers(1, 4), K=st.integers(1, 6), stride=st.integers(1, 3),
       dilation=st.integers(1, 3), padding=st.integers(0, 4), dtype=dtypes)
def test_conv_delta_matches_native(case, Cout, K, stride, dilation, padding, dtype):
    B, L, M, n_frac, seed = case
    gen = torch.Generator().manual_seed(seed)
    ref = make_ref(gen, B, L, n_frac, "cpu")
    mut = bad_rows(gen, B, L, M)
    W = int(torch.randint(1, L + 3, (), generator=gen))
    weight = torch.randn(Cout, 4, K, generator=gen)
    off = torch.randint(-3, L, (M,), generator=gen)
    pre0 = torch.randn(M, Cout, W, generator=gen).to(dtype)

    def run():
        pre = pre0.clone()
        torch.ops.basewise.conv_delta_(pre, weight, mut, ref, off, stride, padding, dilation)
        return pre

    bits_equal(*both(run))


def test_raw_ops_memory_safe_under_fallback(forced):
    _memory_safety_check("cpu")


def test_log2fc_correctly_rounded_under_fallback(forced):
    """42,000 ratios over 60 binades: the fallback's log2 is correctly rounded, like the kernels'."""
    _log2fc_check("cpu")


def test_opcheck_under_fallback(forced):
    for name, args in _opcheck_samples("cpu"):
        torch.library.opcheck(getattr(torch.ops.basewise, name), args)


def test_fallback_never_calls_native(forced, monkeypatch):
    """With the fallback forced, no op reaches basewise._C (so none can crash on a GPU without
    kernels)."""
    from basewise import _C

    class Trap:
        def __getattr__(self, name):
            if name in ("build_info", "cuda_kernel_problem"):
                return getattr(_C, name)
            raise AssertionError(f"native _C.{name} was called")

    monkeypatch.setattr(ops, "_C", Trap())
    for name, args in _opcheck_samples("cpu"):
        getattr(torch.ops.basewise, name)(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(4, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        torch.nn.Conv1d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 20, 2))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("engine", ["full", "incremental"])
def test_ism_on_a_device_without_kernels(engine, monkeypatch):
    """A device without kernels: ISM runs through the fallback, with one warning saying how to get
    the kernels, and the same numbers as the native kernels."""
    seqs = ["".join("ACGTN"[i] for i in np.random.default_rng(s).integers(0, 5, 40)) for s in range(3)]
    model = _model()
    want = basewise.ISM_predict(seqs, model, compare_func="log2FC", return_df=False, engine=engine, batch_size=16)
    monkeypatch.setattr(ops, "fallback_reason", lambda device: "simulated: no kernel image for this device")
    monkeypatch.setattr(ops, "_WARNED", False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = basewise.ISM_predict(seqs, model, compare_func="log2FC", return_df=False, engine=engine,
                                   batch_size=16)
        basewise.ISM_predict(seqs[:1], model, return_df=False, engine=engine)
    fb = [w for w in rec if issubclass(w.category, ops.KernelFallbackWarning)]
    assert len(fb) == 1, [str(w.message) for w in rec]
    msg = str(fb[0].message)
    assert "simulated" in msg and "scripts/build_wheel.sh" in msg and "BASEWISE_CUDA_ARCHS" in msg
    np.testing.assert_array_equal(got, want)


def test_fallback_reason_for_cuda_without_kernels(monkeypatch):
    """The CUDA decision itself, checked without a GPU: a build without CUDA kernels names that."""
    monkeypatch.setattr(ops, "_HAS_CUDA_KERNELS", False)
    assert "built without CUDA kernels" in ops.fallback_reason(torch.device("cuda", 0))
    assert ops.fallback_reason("cpu") is None
    monkeypatch.setattr(ops, "FORCE_TORCH_OPS", True)
    assert "forced" in ops.fallback_reason("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fallback_matches_native_cuda():
    """On a GPU with kernels: the fallback on CUDA tensors equals the native CUDA kernels."""
    if ops.fallback_reason(0) is not None:
        pytest.skip(f"no native kernels on this GPU: {ops.fallback_reason(0)}")
    for name, args in _opcheck_samples("cuda"):
        op = getattr(torch.ops.basewise, name)
        a1 = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        a2 = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        r1 = op(*a1)
        old = ops.FORCE_TORCH_OPS
        ops.FORCE_TORCH_OPS = True
        try:
            r2 = op(*a2)
        finally:
            ops.FORCE_TORCH_OPS = old
        if r1 is not None:
            bits_equal(r1.cpu(), r2.cpu())
        for x, y in zip(a1, a2):
            if isinstance(x, torch.Tensor):
                bits_equal(x.cpu(), y.cpu())


def test_torch_ops_module_has_one_function_per_native_op():
    names = {"enumerate_rows", "mutate", "compare_", "scatter_", "fill_reference_", "gather_windows",
             "splice_windows", "conv_delta_"}
    assert names <= set(dir(_torch_ops))
