"""ISM on a CUDA GPU: same numbers as on the CPU, and a batch loop that never stalls on the host.

Every test here needs a CUDA GPU and skips cleanly without one (benchmarks/gpu_check.sh runs them
on a GPU machine). The sync-free test runs a whole ISM call under
``torch.cuda.set_sync_debug_mode("error")``: any implicit host synchronisation (a ``.item()``, a
blocking device-to-host copy, a data-dependent shape) raises. The only waits left are explicit
``Event.synchronize`` calls on results already ``depth`` batches old (ism._HostResults).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import basewise
from basewise import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(L: int = 200) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(4, 32, 11, padding=5), torch.nn.ReLU(), torch.nn.MaxPool1d(4),
        torch.nn.Conv1d(32, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool1d(5),
        torch.nn.Flatten(), torch.nn.Linear(32 * (L // 20), 3))


def _seqs(n: int, L: int = 200) -> list:
    rng = np.random.default_rng(1)
    return ["".join("ACGT"[i] for i in rng.integers(0, 4, L)) for _ in range(n)]


@pytest.mark.parametrize("engine", ["full", "incremental"])
def test_ism_batch_loop_never_synchronises(engine):
    model = _model().cuda()  # already on the GPU: ISM moves nothing (moving weights would sync)
    seqs = _seqs(3)
    kw = dict(devices=0, engine=engine, batch_size=128, return_df=False)
    want = basewise.ISM_predict(seqs, model, **kw)  # warm-up: cuDNN, plan capture, caches
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = basewise.ISM_predict(seqs, model, **kw)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine", ["full", "incremental"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_gpu_ism_matches_cpu(engine, dtype):
    model = _model()
    seqs = _seqs(2)
    cpu = basewise.ISM_predict(seqs, model, engine=engine, return_df=False, compare_func="subtract")
    run_model, run_dtype = model, dtype
    if engine == "incremental" and dtype is not None:
        # the incremental engine computes in the model's dtype (autocast is for full recompute)
        run_model, run_dtype = copy.deepcopy(model).to(dtype), None
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # true float32
    try:
        gpu = basewise.ISM_predict(seqs, run_model, engine=engine, return_df=False, compare_func="subtract",
                                   devices=0, batch_size=256, dtype=run_dtype)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = float(np.abs(cpu).max())
    tol = 1e-4 if dtype is None else 5e-2  # float32 convs vs bfloat16 autocast
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=tol * scale)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was


def test_gpu_ism_without_native_kernels(monkeypatch):
    """The plain-PyTorch fallback on a real GPU gives the native kernels' numbers."""
    model = _model().cuda()
    seqs = _seqs(2)
    want = basewise.ISM_predict(seqs, model, devices=0, engine="incremental", return_df=False)
    monkeypatch.setattr(ops, "FORCE_TORCH_OPS", True)
    got = basewise.ISM_predict(seqs, model, devices=0, engine="incremental", return_df=False)
    # the ops agree bit for bit (test_fallback); allow for run-to-run variation of cuDNN's algorithms
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_share_the_batches():
    model = _model()
    seqs = _seqs(4)
    one = basewise.ISM_predict(seqs, model, devices=0, engine="full", return_df=False, batch_size=64)
    two = basewise.ISM_predict(seqs, model, devices=[0, 1], engine="full", return_df=False, batch_size=64)
    np.testing.assert_array_equal(two, one)


def test_native_kernels_run_on_this_gpu():
    """The build check of gpu_check.sh: kernels compiled for this GPU (or PTX it can JIT)."""
    assert ops.fallback_reason(0) is None, ops.fallback_reason(0)


def test_host_results_order_and_buffer_reuse():
    """Results land in submission order, at most `depth` behind, in at most `depth` pinned buffers."""
    from basewise.ism import _HostResults

    sink = _HostResults(torch.device("cuda", 0), depth=2)
    got = []
    ys = [torch.full((n, 3), float(i), device="cuda", dtype=dt)
          for i, (n, dt) in enumerate([(5, torch.float32), (7, torch.bfloat16), (2, torch.float32),
                                       (9, torch.float16), (0, torch.float32)])]
    for y in ys:
        sink.submit(y, lambda h: got.append((h.is_pinned(), h.clone())))
        assert len(sink._pending) <= 2 and len(sink._free) + len(sink._pending) <= 2
    sink.drain()
    assert [g.shape for _, g in got] == [y.shape for y in ys]
    for (pinned, g), y in zip(got, ys):
        assert pinned and g.dtype == y.dtype and torch.equal(g, y.cpu())
