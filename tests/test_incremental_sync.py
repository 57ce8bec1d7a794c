"""The incremental engine's batch loop never waits for the device (issue 13), checked on a CPU.

A GPU test (tests/test_gpu.py::test_ism_batch_loop_never_synchronises) runs ISM under
``torch.cuda.set_sync_debug_mode("error")``; without a GPU, these tests record every ATen call
made inside :meth:`IncrementalPredictor.predict` (the batch loop's work) with a
``TorchDispatchMode`` and fail on the calls that make a device wait: reading a value back
(``item``/``int``/``bool``: ``_local_scalar_dense``, ``is_nonzero``, ``equal``) or producing a
data-dependent shape (``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing,
``bincount``, ``repeat_interleave`` without an output size). Both ways the predictor does its
index bookkeeping are checked: on the host (numpy, the CPU's way) and device-side (a GPU's way,
forced here on the CPU), and they must give the same predictions.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import basewise
from basewise.incremental import IncrementalPredictor, plan_ism

aten = torch.ops.aten

_SYNC_PACKETS = {
    aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.item, aten.nonzero, aten.argwhere,
    aten.masked_select, aten._unique, aten._unique2, aten.unique_dim, aten.unique_consecutive,
    aten.unique_dim_consecutive, aten.bincount, aten.histc,
}


class _SyncRecorder(TorchDispatchMode):
    """Records the ATen calls that would make a device wait for its results."""

    def __init__(self):
        super().__init__()
        self.syncs = []
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        pkt = func.overloadpacket
        bad = pkt in _SYNC_PACKETS
        if pkt in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            bad = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (idx or ()))
        if pkt is aten.repeat_interleave and kwargs.get("output_size") is None and \
                not (len(args) > 2 and args[2] is not None):
            bad = isinstance(args[0], torch.Tensor) and len(args) > 1 and isinstance(args[1], torch.Tensor)
        if bad:
            self.syncs.append(str(func))
        return func(*args, **kwargs)


def _hooked_predict(monkeypatch, device_path: bool):
    """Patch IncrementalPredictor.predict to run under a recorder; returns the recorders."""
    recorders = []
    orig = IncrementalPredictor.predict

    def predict(self, mutants):
        if device_path:
            self._host_bookkeeping = False
        if recorders and recorders[-1] is None:  # a nested call (unseen positions): same recorder
            return orig(self, mutants)
        rec = _SyncRecorder()
        recorders.append(None)
        try:
            with rec:
                return orig(self, mutants)
        finally:
            recorders[-1] = rec

    monkeypatch.setattr(IncrementalPredictor, "predict", predict)
    return recorders


class _Crop(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x[:, :, self.n:-self.n]


def _models():
    torch.manual_seed(0)
    L = 120
    # test_gpu's model: conv (first-layer delta), pools, flatten + dense (windows of many offsets)
    gpu_like = nn.Sequential(
        nn.Conv1d(4, 16, 11, padding=5), nn.ReLU(), nn.MaxPool1d(4),
        nn.Conv1d(16, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(5),
        nn.Flatten(), nn.Linear(16 * (L // 20), 3)).eval()
    # a crop (positions the output cannot see), a dilated conv and a profile output
    cropped = nn.Sequential(
        nn.Conv1d(4, 8, 7, padding=3), nn.GELU(), nn.Conv1d(8, 8, 3, dilation=4, padding=4), nn.ReLU(),
        _Crop(30), nn.Conv1d(8, 2, 5)).eval()
    # average pooling to one bin (linear-global mean) after a transposed conv
    tconv = nn.Sequential(
        nn.Conv1d(4, 8, 5, stride=2, padding=2), nn.ReLU(), nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1),
        nn.Sigmoid(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    return {"gpu_like": (gpu_like, L), "cropped": (cropped, L), "tconv": (tconv, L)}


def _seqs(n, L, seed=3):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), L)) for _ in range(n)]


@pytest.mark.parametrize("device_path", [False, True], ids=["host-bookkeeping", "device-side"])
@pytest.mark.parametrize("name", ["gpu_like", "cropped", "tconv"])
def test_ism_batch_loop_makes_no_synchronising_call(monkeypatch, name, device_path):
    model, L = _models()[name]
    seqs = _seqs(2, L)
    kw = dict(engine="incremental", batch_size=128, return_df=False)
    full = basewise.ISM_predict(seqs, model, engine="full", batch_size=128, return_df=False)
    basewise.ISM_predict(seqs, model, **kw)  # warm-up: plan capture and the plan's tables
    assert plan_ism(model, L, cached_only=True).supported
    recorders = _hooked_predict(monkeypatch, device_path)
    got = basewise.ISM_predict(seqs, model, **kw)
    assert recorders and all(r is not None for r in recorders)
    assert all(r.calls > 0 for r in recorders)  # the recorder saw the batch's work
    syncs = sorted({s for r in recorders for s in r.syncs})
    assert not syncs, f"{name}: the batch loop calls {syncs}"
    scale = float(np.abs(full).max())
    assert float(np.abs(got - full).max()) <= 1e-5 * scale


def test_device_side_bookkeeping_matches_the_host_one():
    """Every shortcut the host bookkeeping takes has a device-side path with the same numbers,
    also with sub-batches, positions the output cannot see and several sequences."""
    for name, (model, L) in _models().items():
        plan = plan_ism(model, L)
        ref = torch.randint(0, 4, (3, L), generator=torch.Generator().manual_seed(5))
        pos = torch.arange(L).repeat_interleave(3)
        muts = torch.stack([pos % 3, pos, (ref[pos % 3, pos] + torch.arange(1, 4).repeat(L)) % 4], 1)
        host = IncrementalPredictor(plan, ref, max_batch=50)
        dev = IncrementalPredictor(plan, ref, max_batch=50)
        dev._host_bookkeeping = False
        a, b = host.predict(muts), dev.predict(muts)
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max()), name
        # exactly the reference where the output cannot see the substitution
        unseen = ~torch.as_tensor(plan.reach)[muts[:, 1]]
        if unseen.any():
            torch.testing.assert_close(b[unseen], dev.reference()[muts[unseen, 0]], rtol=0, atol=0)


def test_default_max_batch_is_device_aware():
    from basewise.incremental import executor

    model, L = _models()["gpu_like"]
    pred = IncrementalPredictor(plan_ism(model, L), torch.zeros(1, L, dtype=torch.long))
    budget, cap = executor._BATCH_BUDGET["cpu"]
    assert pred.max_batch == max(16, min(cap, budget // max(1, pred._bytes_per_mutant)))
    assert executor._BATCH_BUDGET["cuda"][0] > budget and executor._BATCH_BUDGET["cuda"][1] > cap
