"""Exactness of the incremental ISM engine against full recomputation.

Every check compares :class:`basewise.incremental.IncrementalPredictor` with a naive reference:
the model's forward (then the prediction transform) on the mutated one-hot sequence. Tolerance:
float32, max |incremental - full| <= 1e-5 * max |full| (the output scale), plus a tiny absolute
floor for all-zero outputs.

Random architectures (seeded) combine convolutions with random kernel sizes, dilations, strides and
paddings ('same', 'valid', ints), batch norm, activations, max/avg pooling, residual blocks, crops,
pads, channel concatenation, layer norm and dense layers on a transposed layout, and profile,
scalar and transformer heads. Sequences contain N bases; positions near both ends are included;
batch sizes 1 and several.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from basewise.incremental import (INCREMENTAL_MIN_RATIO, IncrementalPredictor, IsmPlan, ism_plan_report,
                                  plan_ism)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import models as bench_models  # noqa: E402
from _grelu_standins import StandInLightningModel  # noqa: E402  (tests/ is on sys.path)

RTOL = 1e-5


# ----------------------------------------------------------------------------- helpers


def onehot(idx: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(B, L) indices (4 = N) -> (B, 4, L) one-hot, N = zero column."""
    x = torch.zeros(idx.shape[0], 5, idx.shape[1], dtype=dtype)
    x.scatter_(1, idx.long()[:, None, :], 1.0)
    return x[:, :4]


def as3d(y: torch.Tensor) -> torch.Tensor:
    return y[:, :, None] if y.ndim == 2 else (y[:, None, None] if y.ndim == 1 else y)


def naive(model, transform, ref: torch.Tensor, mutants: torch.Tensor) -> torch.Tensor:
    """Full recomputation: forward on mutated one-hot sequences, (M, T, L_out)."""
    idx = ref[mutants[:, 0]].clone().long()
    idx[torch.arange(mutants.shape[0]), mutants[:, 1]] = mutants[:, 2]
    with torch.no_grad():
        outs = []
        for s in range(0, idx.shape[0], 256):
            y = model(onehot(idx[s:s + 256]))
            if transform is not None:
                y = transform(y)
            outs.append(as3d(y))
    return torch.cat(outs)


def random_ref(rng: np.random.RandomState, b: int, length: int, n_frac: float = 0.05) -> torch.Tensor:
    ref = rng.randint(0, 4, size=(b, length))
    ref[rng.rand(b, length) < n_frac] = 4
    ref[0, 0] = 4  # an N at the very start
    return torch.as_tensor(ref, dtype=torch.uint8)


def all_mutants(ref: torch.Tensor, positions=None) -> torch.Tensor:
    b, length = ref.shape
    positions = range(length) if positions is None else positions
    rows = []
    for s in range(b):
        for p in positions:
            for a in range(4):
                if a != int(ref[s, p]):
                    rows.append((s, p, a))
    return torch.tensor(rows, dtype=torch.long)


def check_exact(model, length, *, transform=None, b=2, seed=0, positions=None, max_batch=None,
                expect_local=True, native=True):
    rng = np.random.RandomState(seed)
    plan = plan_ism(model, length, prediction_transform=transform)
    assert plan.supported, plan.reason
    if expect_local:
        assert plan.n_local > 0, str(plan)
    ref = random_ref(rng, b, length)
    pred = IncrementalPredictor(plan, ref, max_batch=max_batch)
    if not native:
        pred._native = False  # the plain-PyTorch window helpers (reference for the native ops)
    with torch.no_grad():
        r = pred.reference()
    r_full = naive(model, transform, ref, torch.tensor([[s, 0, int(ref[s, 0])] for s in range(b)]))
    # the reference rows: mutate position 0 to its own base (N stays N) = unmutated sequence
    assert r.shape == r_full.shape
    scale = float(r_full.abs().max()) + 1e-12
    assert float((r - r_full).abs().max()) <= RTOL * scale + 1e-7
    muts = all_mutants(ref, positions)
    perm = torch.as_tensor(rng.permutation(muts.shape[0]))  # batches mix positions and sequences
    muts = muts[perm]
    y = pred.predict(muts)
    y_full = naive(model, transform, ref, muts)
    assert y.shape == y_full.shape
    scale = float(y_full.abs().max()) + 1e-12
    err = float((y - y_full).abs().max())
    assert err <= RTOL * scale + 1e-7, f"max error {err:.3g} vs scale {scale:.3g}\n{plan}"
    return plan


# ----------------------------------------------------------------------------- random architectures


class RandomNet(nn.Module):
    """A random conv architecture described by a seed (see the module docstring)."""

    def __init__(self, seed: int, length: int, head: str) -> None:
        super().__init__()
        rng = np.random.RandomState(seed)
        self.head_kind = head
        c = int(rng.choice([4, 6, 8]))
        k0 = int(rng.choice([1, 2, 3, 5, 8]))
        pad0 = rng.choice(["same", "valid", "int"])
        if pad0 == "int":
            pad0 = int(rng.randint(0, k0))
        if k0 % 2 == 0 and pad0 == "same":
            pad0 = "valid"
        self.stem = nn.Conv1d(4, c, k0, padding=pad0)
        cur = length + (2 * pad0 - k0 + 1 if isinstance(pad0, int) else (0 if pad0 == "same" else 1 - k0))
        self.ops = nn.ModuleList()
        self.kinds = []
        n_blocks = int(rng.randint(2, 5))
        for _ in range(n_blocks):
            kind = rng.choice(["conv", "res", "pool", "bnact", "crop", "cat", "stride", "pad", "ln", "tconv"])
            if kind == "conv":
                k = int(rng.choice([1, 2, 3, 4, 5, 7]))
                d = int(rng.choice([1, 1, 2, 3]))
                p = rng.choice(["same", "valid", "int"])
                if p == "int":
                    p = int(rng.randint(0, (k - 1) * d + 1))
                if p == "same" and ((k - 1) * d) % 2:
                    p = "valid"
                new = int(rng.choice([4, 6, 8]))
                mod = nn.Conv1d(c, new, k, dilation=d, padding=p)
                eff = (k - 1) * d
                cur = cur + (2 * p - eff if isinstance(p, int) else (0 if p == "same" else -eff))
                c = new
            elif kind == "stride":
                k = int(rng.choice([2, 3, 4]))
                s = int(rng.choice([2, 3]))
                p = int(rng.randint(0, k // 2 + 1))
                mod = nn.Conv1d(c, c, k, stride=s, padding=p)
                cur = (cur + 2 * p - k) // s + 1
            elif kind == "tconv":
                k = int(rng.choice([1, 2, 3, 4]))
                s = int(rng.choice([1, 2, 3]))
                d = int(rng.choice([1, 2]))
                p = int(rng.randint(0, (k - 1) * d // 2 + 1))
                op = int(rng.randint(0, max(s, d)))
                mod = nn.ConvTranspose1d(c, c, k, stride=s, padding=p, output_padding=op, dilation=d)
                cur = (cur - 1) * s - 2 * p + d * (k - 1) + op + 1
            elif kind == "res":
                k = int(rng.choice([3, 5]))
                d = int(rng.choice([1, 2, 4]))
                mod = nn.Conv1d(c, c, k, dilation=d, padding=(k - 1) * d // 2)
            elif kind == "pool":
                k = int(rng.choice([2, 3, 4]))
                if rng.rand() < 0.5:
                    s = int(rng.choice([1, k]))
                    p = int(rng.randint(0, k // 2 + 1))
                    ceil = bool(rng.rand() < 0.3)
                    mod = nn.MaxPool1d(k, s, padding=p, ceil_mode=ceil)
                    out = (cur + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
                    if ceil and (out - 1) * s >= cur + p:
                        out -= 1
                    cur = out
                else:
                    mod = nn.AvgPool1d(k)
                    cur = (cur - k) // k + 1
            elif kind == "bnact":
                mod = nn.Sequential(nn.BatchNorm1d(c), rng.choice([nn.ReLU(), nn.GELU(), nn.Softplus(), nn.ELU()]))
                with torch.no_grad():
                    mod[0].running_mean.normal_()
                    mod[0].running_var.uniform_(0.5, 2)
            elif kind == "crop":
                a, b = int(rng.randint(0, 4)), int(rng.randint(1, 4))
                mod = nn.Identity()
                mod.crop = (a, b)
                cur = cur - a - b
            elif kind == "cat":
                mod = nn.Conv1d(c, 3, 1)
                c = c + 3
            elif kind == "pad":
                a, b = int(rng.randint(0, 3)), int(rng.randint(0, 3))
                mod = nn.Identity()
                mod.pads = (a, b)
                cur = cur + a + b
            else:  # layer norm + dense on the transposed (B, L, C) layout
                mod = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c))
            self.ops.append(mod)
            self.kinds.append(kind)
            if cur < 4:
                raise ValueError("too short")
        self.c, self.cur = c, cur
        if head == "profile":
            self.head = nn.Conv1d(c, 2, 3, padding=1)
        elif head == "flatten":
            self.head = nn.Linear(c * cur, 3)
        elif head == "mean":
            self.head = nn.Linear(c, 2)
        elif head == "transformer":
            layer = nn.TransformerEncoderLayer(c, 2, 2 * c, dropout=0.0, batch_first=True)
            self.tr = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(c, 2)
        with torch.no_grad():
            for p in self.parameters():
                if p.ndim > 1:
                    p.mul_(1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for kind, mod in zip(self.kinds, self.ops):
            if kind == "res":
                x = x + F.relu(mod(x))
            elif kind == "crop":
                a, b = mod.crop
                x = x[:, :, a:x.shape[-1] - b]
            elif kind == "cat":
                x = torch.cat([x, torch.tanh(mod(x))], dim=1)
            elif kind == "pad":
                x = F.pad(x, mod.pads)
            elif kind == "ln":
                x = mod(x.transpose(1, 2)).transpose(1, 2)
            else:
                x = mod(x)
        if self.head_kind == "profile":
            return self.head(x)
        if self.head_kind == "flatten":
            return self.head(x.flatten(1))
        if self.head_kind == "mean":
            return self.head(x.mean(dim=-1))
        y = self.tr(x.transpose(1, 2))
        return self.head(y.mean(dim=1))


def make_random(seed: int, length: int, head: str) -> nn.Module:
    for s in range(seed, seed + 1000, 97):
        try:
            m = RandomNet(s, length, head).eval()
            with torch.no_grad():
                m(torch.zeros(1, 4, length))
            return m
        except (ValueError, RuntimeError):
            continue
    raise AssertionError("no valid random architecture")


@pytest.mark.parametrize("seed,length,head", [
    (0, 37, "profile"), (1, 64, "flatten"), (2, 50, "mean"), (3, 81, "profile"),
    (4, 45, "flatten"), (5, 70, "mean"), (6, 64, "transformer"), (7, 33, "profile"),
    (8, 90, "mean"), (9, 58, "flatten"), (10, 72, "transformer"), (11, 41, "profile"),
])
def test_random_architectures_exact(seed, length, head):
    torch.manual_seed(seed)
    model = make_random(seed, length, head)
    check_exact(model, length, b=2 if seed % 2 else 1, seed=seed, max_batch=int(7 + seed * 13),
                expect_local=True)


def test_random_architectures_many_seeds_small():
    """More seeds at one short length, all heads, all mutants of 3 sequences."""
    for seed in range(20, 36):
        head = ["profile", "flatten", "mean"][seed % 3]
        model = make_random(seed, 30, head)
        check_exact(model, 30, b=3, seed=seed)


@pytest.mark.parametrize("seed", [40, 41, 42, 43])
def test_random_architectures_plain_pytorch_path(seed):
    """The plain-PyTorch window helpers (used without the native ops, e.g. float64) are exact too."""
    head = ["profile", "flatten", "mean", "transformer"][seed % 4]
    model = make_random(seed, 48, head)
    check_exact(model, 48, b=2, seed=seed, native=False, max_batch=50)


# ----------------------------------------------------------------------------- specific operators


class Ops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding="same")
        self.c2 = nn.Conv1d(8, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv1d(8, 8, 3, dilation=3, padding="same", groups=2)
        self.ct = nn.ConvTranspose1d(8, 4, 4, stride=2)
        self.bn = nn.BatchNorm1d(8)
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        y = F.max_pool1d(F.relu(self.bn(self.c1(x))), 3, 2, padding=1, ceil_mode=True)
        y = self.c2(y)
        y = y + torch.sigmoid(self.c3(y)) * y
        y = self.lin(y.transpose(1, 2)).transpose(1, 2)
        y = F.adaptive_avg_pool1d(y[:, :, :16], 8)  # crop, then pooling by 2
        z = self.ct(y)  # transposed conv (stride 2)
        return torch.cat([z.mean(-1), y.sum(-1)], dim=1)


def test_operator_mix_exact():
    torch.manual_seed(0)
    model = Ops().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2)
    plan = check_exact(model, 64, b=2)
    kinds = {l.op: l.kind for l in plan.layers}
    assert kinds["aten.conv_transpose1d.default"] == "local"
    assert kinds["aten.max_pool1d.default"] == "local"
    assert kinds["aten.linear.default"] == "local"  # dense over channels on (B, L, C)
    assert kinds["aten.adaptive_avg_pool1d.default"] == "local"


class Cumsum(nn.Module):
    """An op without a locality rule (cumsum along the length) in the middle of a conv trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 5, padding=2)
        self.c2 = nn.Conv1d(6, 6, 5, padding=2)

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = torch.cumsum(y, dim=-1) / 10
        return self.c2(y)


def test_op_without_rule_is_global_and_exact():
    model = Cumsum().eval()
    plan = check_exact(model, 40, b=1)
    kinds = {l.op: l.kind for l in plan.layers}
    assert kinds["aten.cumsum.default"] == "global"
    assert "aten.conv1d.default" in kinds


def test_lightning_like_model_with_activation_and_transform():
    class SumBins(nn.Module):
        def forward(self, y):
            return y[:, :2, 10:30].sum(dim=-1, keepdim=True)

    net = nn.Sequential(nn.Conv1d(4, 8, 7, padding=3), nn.ReLU(), nn.Conv1d(8, 3, 5, padding=2))
    m = StandInLightningModel(net, activation="exp").eval()
    m.add_transform(SumBins())
    plan = check_exact(m, 60, b=2)
    assert plan.supported and plan.predicted_flop_ratio > 1
    m.reset_transform()
    check_exact(m, 60, b=1)  # new transform -> new plan (cache keyed by the transform)


def test_tuple_output_needs_transform():
    model = bench_models.bpnet_like(8, 3, out_len=40).eval()
    plan = plan_ism(model, 120)
    assert not plan.supported and "tuple" in plan.reason
    with pytest.raises(ValueError, match="plan"):
        IncrementalPredictor(plan, torch.zeros(1, 120, dtype=torch.uint8))
    check_exact(model, 120, transform=bench_models.bpnet_counts_transform, b=2)


def test_fully_global_model_is_unsupported_with_reason():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4 * 20, 2)

        def forward(self, x):
            return self.l(torch.cumsum(x, -1).flatten(1))

    plan = plan_ism(Dense().eval(), 20)
    assert not plan.supported
    assert "local" in plan.reason
    assert "NOT supported" in str(plan)


def test_plan_report_and_state_restored():
    model = bench_models.basset_like(3, length=200)
    model.train()
    plan = plan_ism(model, 200, use_cache=False)
    assert model.training and all(m.training for m in model.modules())
    assert plan.supported and plan.worthwhile
    assert plan.predicted_flop_ratio > INCREMENTAL_MIN_RATIO
    text = str(plan)
    assert "delta" in text and "linear-global" in text and "predicted ratio" in text
    assert isinstance(plan, IsmPlan) and any(l.kind == "delta" for l in plan.layers)
    assert "engine='auto' uses the incremental path" in ism_plan_report(model, 200)
    class CumsumFirst(nn.Module):  # nothing local: a cumulative sum over the length comes first
        def forward(self, x):
            return torch.cumsum(x, -1).sum(1)

    assert "full recomputation" in ism_plan_report(CumsumFirst(), 20)


def test_bad_arguments():
    model = nn.Sequential(nn.Conv1d(4, 2, 3, padding=1)).eval()
    with pytest.raises(ValueError, match="length"):
        plan_ism(model, 0)
    plan = plan_ism(model, 10)
    with pytest.raises(ValueError, match="ref_idx"):
        IncrementalPredictor(plan, torch.zeros(1, 11, dtype=torch.uint8))
    with pytest.raises(ValueError, match="ref_idx"):
        IncrementalPredictor(plan, torch.zeros(11, dtype=torch.uint8))
    pred = IncrementalPredictor(plan, torch.zeros(1, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mutants"):
        pred.predict(torch.zeros(3, 2, dtype=torch.long))
    assert pred.predict(torch.zeros(0, 3, dtype=torch.long)).shape[0] == 0


def test_float64_model():
    model = nn.Sequential(nn.Conv1d(4, 6, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                          nn.Linear(6 * 20, 2)).double().eval()
    ref = torch.randint(0, 5, (2, 40), dtype=torch.uint8)
    plan = plan_ism(model, 40)
    pred = IncrementalPredictor(plan, ref)
    muts = all_mutants(ref)
    y = pred.predict(muts)
    assert y.dtype == torch.float64
    idx = ref[muts[:, 0]].clone().long()
    idx[torch.arange(muts.shape[0]), muts[:, 1]] = muts[:, 2]
    with torch.no_grad():
        yf = model(onehot(idx, torch.float64))[:, :, None]
    assert float((y - yf).abs().max()) <= 1e-12 * float(yf.abs().max())


# ----------------------------------------------------------------------------- benchmark models


def _ends_and_middle(length: int, k: int = 6):
    return sorted(set(list(range(k)) + list(range(length // 2 - k // 2, length // 2 + k // 2))
                      + list(range(length - k, length))))


def test_benchmark_basset_like_exact():
    model = bench_models.basset_like(8)
    plan = check_exact(model, 1000, b=2, positions=_ends_and_middle(1000))
    assert plan.predicted_flop_ratio > 10


def test_benchmark_bpnet_like_exact():
    model = bench_models.bpnet_like()
    plan = check_exact(model, 2114, transform=bench_models.bpnet_counts_transform, b=1,
                       positions=_ends_and_middle(2114, 4))
    assert plan.predicted_flop_ratio > 4


def test_benchmark_conv_transformer_exact():
    model = bench_models.conv_transformer()
    check_exact(model, 1000, b=2, positions=_ends_and_middle(1000))


@pytest.mark.parametrize("agg", ["max", "min", "amax", "topk"])
def test_multi_output_ops_in_the_transform(agg):
    """torch.max(dim) returns (values, indices): a multi-output node must be global, not constant."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv1d(4, 3, 5, padding=2)
            self.head = nn.Conv1d(3, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))

    def transform(y):
        s = y.sum(2, keepdim=True)
        if agg == "max":
            return torch.max(s, dim=1, keepdim=True).values
        if agg == "min":
            return torch.min(y, dim=2, keepdim=True)[0]
        if agg == "topk":
            return torch.topk(y, 2, dim=2).values.sum(2, keepdim=True)
        return s.amax(1, keepdim=True)

    check_exact(Net().eval(), 16, transform=transform, b=2)


def test_cached_only_and_dtype_mismatch():
    model = nn.Sequential(nn.Conv1d(4, 3, 5, padding=2), nn.ReLU(), nn.Conv1d(3, 1, 3, padding=1)).eval()
    p0 = plan_ism(model, 33, cached_only=True)
    assert not p0.supported and "not captured" in p0.reason
    p1 = plan_ism(model, 33)
    assert p1.supported
    assert plan_ism(model, 33, cached_only=True) is p1
    p2 = plan_ism(model, 33, dtype=torch.bfloat16)  # autocast: the engine must use its full path
    assert not p2.supported and "dtype" in p2.reason


def test_predictors_share_static_state_and_see_weight_updates():
    """A second predictor reuses the plan's tables; an in-place weight update is picked up.

    The tables do not depend on the weights; the tensors derived from the weights (the dense
    layer by position, the first layer's delta table) are built by every predictor."""
    model = bench_models.basset_like(2, length=120)
    plan = plan_ism(model, 120)
    ref = torch.randint(0, 4, (1, 120), dtype=torch.uint8)
    p1 = IncrementalPredictor(plan, ref)
    p2 = IncrementalPredictor(plan, ref)
    assert p2._asm is p1._asm
    muts = all_mutants(ref, [0, 60, 119])
    derived = {k: {kk: t.clone() for kk, t in v.items()} for k, v in p1._w.items()}
    assert derived  # basset_like has both: a first-layer delta and a dense layer on windows
    with torch.no_grad():
        model.fc1.weight.mul_(-2.0)  # the dense-delta weights are derived from this
        model.conv1.weight.add_(0.1)  # the first-layer delta reads this live
    p3 = IncrementalPredictor(plan, ref)
    assert p3._asm is p1._asm
    for k, v in derived.items():
        for kk, t in v.items():
            assert not torch.equal(p3._w[k][kk], t), (k, kk)  # rebuilt from the updated weights
    y = p3.predict(muts)
    y_full = naive(model, None, ref, muts)
    assert float((y - y_full).abs().max()) <= RTOL * float(y_full.abs().max())


class _PickTask(nn.Module):
    """Like gReLU's ``Aggregate(tasks=[k])``: (B, T, L) -> (B, 1, L)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, y):
        return y[:, self.k:self.k + 1]


def test_fresh_transform_per_call_never_reuses_a_stale_plan():
    """gReLU's idiom: a new transform object in every call. CPython readily puts a new object at a
    freed one's address (closures almost always); the plan cache must not mistake it for the old
    transform, whose plan would give the old task's numbers."""
    import gc
    import warnings

    import basewise

    def pick(k):
        return lambda y: y[:, k:k + 1]

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(4, 6, 7, padding=3), nn.ReLU(), nn.Conv1d(6, 3, 3, padding=1)).eval()
    seqs = ["".join(np.random.default_rng(s).choice(list("ACGTN"), 37)) for s in range(2)]
    expected = {k: basewise.ISM_predict(seqs, model, prediction_transform=_PickTask(k), return_df=False,
                                        engine="full") for k in range(3)}
    for i in range(12):
        k = i % 3
        t = pick(k)
        if i % 2:
            plan_ism(model, 37, prediction_transform=t)  # cache a plan for t, then free t
            del t
            gc.collect()
            t = pick(k)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning either
            out = basewise.ISM_predict(seqs, model, prediction_transform=t, return_df=False,
                                       engine="incremental")
        scale = float(np.abs(expected[k]).max())
        assert float(np.abs(out - expected[k]).max()) <= RTOL * scale, (i, k)
        plan = plan_ism(model, 37, prediction_transform=t)
        del t
        gc.collect()
        assert plan_ism(model, 37, prediction_transform=pick((k + 1) % 3), cached_only=True) is not plan


def test_replaced_submodule_gets_a_new_plan():
    """Swapping a layer for a new one of the same type and shape must not reuse the old plan."""
    import basewise
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(4, 5, 5, padding=2), nn.ReLU(), nn.Conv1d(5, 2, 3, padding=1)).eval()
    seq = "".join(np.random.default_rng(9).choice(list("ACGT"), 29))
    for trial in range(4):
        model[2] = nn.Conv1d(5, 2, 3, padding=1).eval()  # the old layer is freed
        inc = basewise.ISM_predict(seq, model, return_df=False, engine="incremental")
        full = basewise.ISM_predict(seq, model, return_df=False, engine="full")
        assert float(np.abs(inc - full).max()) <= RTOL * float(np.abs(full).max()), trial


class _ConvRNN(nn.Module):
    """Conv trunk + bidirectional GRU/LSTM (zero initial state built from the batch size)."""

    def __init__(self, kind: str):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = rnn(8, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)  # (B, L, 8)
        y, _ = self.rnn(h)
        return self.fc(y).transpose(1, 2)  # (B, 3, L)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_tail_with_batch_sized_initial_state(kind):
    """gReLU's ConvGRUModel pattern: the RNN's zero initial state has the batch size on axis 1,
    so it must be rebuilt for every mutant batch, not taken from the reference pass."""
    torch.manual_seed(5)
    model = _ConvRNN(kind).eval()
    ref = torch.randint(0, 5, (2, 31), dtype=torch.uint8)
    plan = plan_ism(model, 31, use_cache=False)
    assert plan.supported, plan.reason
    # the recurrent layer's cost is counted (2 FLOPs per weight entry and step): 2 layers x 2
    # directions, gates x (input + hidden) weights, 31 steps
    gates = 3 if kind == "gru" else 4
    rnn = [layer for layer in plan.layers if kind in layer.op]
    expected = 2.0 * 31 * 2 * (gates * 6 * (8 + 6) + gates * 6 * (12 + 6))
    assert len(rnn) == 1 and rnn[0].flops_full == pytest.approx(expected)
    muts = all_mutants(ref, [0, 1, 15, 29, 30])
    for max_batch in (1, 7, 64):
        y = IncrementalPredictor(plan, ref, max_batch=max_batch).predict(muts)
        y_full = naive(model, None, ref, muts)
        assert float((y - y_full).abs().max()) <= RTOL * float(y_full.abs().max()), max_batch
