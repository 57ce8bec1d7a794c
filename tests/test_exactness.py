"""No silent wrong numbers: the ISM engines against full recompute, and the defects of issue 15.

Tolerance everywhere: float32, max |engine - full| <= 1e-5 * max |full| (the output scale); where
full recompute gives a mutant exactly the reference's prediction (a position the model never
reads), the incremental engine must too (exactly 0 effect).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import basewise
from basewise.incremental import IsmPlan, plan_ism

sys.path.insert(0, os.path.dirname(__file__))
from _fuzz_models import random_model, random_seqs  # noqa: E402

RTOL = 1e-5


def _rand_seq(length: int, seed: int) -> str:
    return "".join(np.random.RandomState(seed).choice(list("ACGT"), length))


def assert_same_ism(a: np.ndarray, full: np.ndarray, what: str = "") -> None:
    scale = max(float(np.abs(full).max()), 1e-30)
    err = float(np.abs(a - full).max())
    assert err <= RTOL * scale, f"{what}: max |engine - full| = {err:.3g} on an output scale of {scale:.3g}"


# ----------------------------------------------------------------------------- 1. unread positions


class CenterCrop(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 16, 9, padding=4)
        self.c2 = nn.Conv1d(16, 1, 9, padding=4)

    def forward(self, x):
        x = x[:, :, 10:-10]
        return self.c2(F.relu(self.c1(x))).mean(-1)

    @staticmethod
    def unread(length):
        p = np.arange(length)
        return (p < 10) | (p >= length - 10)


class StridedPoolFirst(nn.Module):
    """A max pool of stride 3 on a length it does not divide, before any convolution."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.fc = nn.Conv1d(8, 2, 1)

    def forward(self, x):
        x = F.max_pool1d(x, 2, 3)
        return self.fc(F.relu(self.c1(x)))

    @staticmethod
    def unread(length):
        p = np.arange(length)
        return (p % 3 == 2) | (p >= 3 * ((length - 2) // 3 + 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cls", [CenterCrop, StridedPoolFirst])
def test_unread_positions_have_exactly_zero_effect(cls, seed):
    torch.manual_seed(seed)
    m = cls().eval()
    seq = _rand_seq(301, seed)
    full = basewise.ISM_predict(seq, m, engine="full", return_df=False)
    inc = basewise.ISM_predict(seq, m, engine="incremental", return_df=False)
    assert_same_ism(inc, full, cls.__name__)
    scale = float(np.abs(full).max())
    full_eff = basewise.ISM_predict(seq, m, compare_func="subtract", engine="full", return_df=False)
    inc_eff = basewise.ISM_predict(seq, m, compare_func="subtract", engine="incremental", return_df=False)
    unread = cls.unread(301)  # (P,) positions the model never reads
    assert np.all(np.abs(full_eff[0, unread]) <= RTOL * scale)
    assert np.all(inc_eff[0, unread] == 0), "non-zero effects at positions the model never reads"
    # the default engine: same numbers, no warning (a plan is cached now, so 'auto' may use it)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = basewise.ISM_predict(seq, m, return_df=False)
    assert_same_ism(auto, full, "auto")


# ----------------------------------------------------------------------------- fuzz (CI subset)

# Fixed seeds: ~60 random architectures, well under a minute on 2 cores. The long run is
# ``python benchmarks/fuzz_ism.py --seeds 0:2000`` (results in benchmarks/RESULTS.md).
FUZZ_SEEDS = list(range(0, 60))


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_fuzz_random_architectures(seed):
    m, length = random_model(seed)
    seqs = random_seqs(length, 2, seed)
    full = basewise.ISM_predict(seqs, m, engine="full", return_df=False)
    plan = plan_ism(m, length)
    if not plan.supported:
        pytest.skip(f"not supported by the incremental engine: {plan.reason}")
    inc = basewise.ISM_predict(seqs, m, engine="incremental", return_df=False)
    assert_same_ism(inc, full, f"seed {seed}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        auto = basewise.ISM_predict(seqs, m, engine="auto", return_df=False)
    assert_same_ism(auto, full, f"seed {seed} auto")


# ----------------------------------------------------------------------------- the safety net


def test_check_positions_cover_rule_changes():
    torch.manual_seed(0)
    plan = plan_ism(CenterCrop().eval(), 301)
    pos = plan.check_positions()
    assert {0, 300} <= set(pos) and ({9, 10} & set(pos)) and ({290, 291} & set(pos))
    assert len(pos) <= 8
    assert all(100 <= p < 120 for p in plan.check_positions(100, 120))


@pytest.mark.parametrize("bad_pos,bad_base", [(9, None), (291, 1)])
def test_safety_net_catches_a_wrong_rule(monkeypatch, bad_pos, bad_base):
    """A rule wrong at one crop boundary only (and, in the second case, for one alternative base
    only) is caught by 'auto': warning, and the call's numbers are full recompute's."""
    from basewise.incremental import IncrementalPredictor

    torch.manual_seed(1)
    m = CenterCrop().eval()
    seq = _rand_seq(301, 1)
    full = basewise.ISM_predict(seq, m, engine="full", return_df=False)
    plan_ism(m, 301)  # cached: 'auto' uses it without estimating the cost of a capture
    orig = IncrementalPredictor.predict

    def wrong(self, mutants):
        y = orig(self, mutants)
        hit = mutants[:, 1] == bad_pos
        if bad_base is not None:
            hit &= mutants[:, 2] == bad_base
        y[hit] += 1e-3 * y.abs().max()
        return y

    monkeypatch.setattr(IncrementalPredictor, "predict", wrong)
    # 'auto' must take the incremental path here whatever the timed cost probe measures
    monkeypatch.setattr(IsmPlan, "prefers_incremental", lambda self, *a, **k: True)
    with pytest.warns(RuntimeWarning, match="disagreed with full recompute"):
        auto = basewise.ISM_predict(seq, m, return_df=False)
    assert_same_ism(auto, full, "auto after the safety net")


# ----------------------------------------------------------------------------- 2. model changes


class Tailed(nn.Module):
    """First conv (weight deltas), a flatten + dense tail (derived weights), a scale and a
    reverse-complement flag read by forward."""

    def __init__(self, length: int):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 7, padding=3)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 5, padding=2)
        self.fc = nn.Linear(8 * length, 3)
        self.scale = 1.0
        self.rc = False

    def forward(self, x):
        if self.rc:
            x = x.flip(1, 2)
        y = self.c2(F.relu(self.bn(self.c1(x)))) * self.scale
        return self.fc(F.relu(y).flatten(1))


def _change(m: Tailed, how: str) -> None:
    with torch.no_grad():
        if how == "load_state_dict":
            sd = {k: (v * -2 if k.endswith(("weight", "bias")) and not k.startswith("bn") else v)
                  for k, v in m.state_dict().items()}
            m.load_state_dict(sd)
        elif how == "data":
            m.fc.weight.data.mul_(-2)  # in place through .data: no version bump on the parameter
            m.c1.weight.data[:] = m.c1.weight.data * 0.5
        elif how == "numpy":
            m.fc.weight.detach().numpy()[:] *= -2
            m.c1.weight.detach().numpy()[:] *= 3
        elif how == "copy_":
            m.fc.weight.copy_(torch.randn_like(m.fc.weight))
            m.c1.weight.copy_(torch.randn_like(m.c1.weight))
        elif how == "scale":
            m.scale = -3.0
        elif how == "flag":
            m.rc = True
        elif how == "train_eval":
            m.bn.running_mean.uniform_(-1, 1)
            m.train()
            m(torch.randn(4, 4, 64))  # updates the running statistics in training mode
            m.eval()


@pytest.mark.parametrize("how", ["load_state_dict", "data", "numpy", "copy_", "scale", "flag", "train_eval"])
def test_model_changed_between_calls(how):
    torch.manual_seed(2)
    m = Tailed(64).eval()
    seqs = random_seqs(64, 2, 5)
    before = basewise.ISM_predict(seqs, m, engine="incremental", return_df=False)
    _change(m, how)
    full = basewise.ISM_predict(seqs, m, engine="full", return_df=False)
    assert np.abs(full - before).max() > 1e-3 * np.abs(full).max()  # the change matters
    inc = basewise.ISM_predict(seqs, m, engine="incremental", return_df=False)
    assert_same_ism(inc, full, how)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        auto = basewise.ISM_predict(seqs, m, return_df=False)
    assert_same_ism(auto, full, how + " auto")


# ----------------------------------------------------------------------------- 3. dtype


@pytest.mark.parametrize("model_dtype,dtype,ok", [
    (torch.float32, torch.float32, True), (torch.float32, torch.bfloat16, True),
    (torch.float32, torch.float16, True), (torch.float32, torch.float64, False),
    (torch.float64, torch.float64, True), (torch.float64, torch.float32, False),
    (torch.float64, torch.float16, False), (torch.float64, torch.bfloat16, False),
    (torch.bfloat16, torch.float32, False),
])
def test_dtype_combinations_work_or_are_refused_before_the_model_runs(model_dtype, dtype, ok):
    calls = []
    m = nn.Sequential(nn.Conv1d(4, 1, 5, padding=2)).to(model_dtype)
    m.register_forward_hook(lambda *a: calls.append(1))
    if ok:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = basewise.ISM_predict("ACGT" * 8, m, dtype=dtype, return_df=False)
        assert out.dtype == np.float32 and np.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match="dtype"):
            basewise.ISM_predict("ACGT" * 8, m, dtype=dtype, return_df=False)
        assert not calls
    assert next(m.parameters()).dtype == model_dtype


# ----------------------------------------------------------------------------- 4. batch axis


class Squeezed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.c(x).mean(-1).squeeze()  # (T,) for one sequence


class Unsqueezed(Squeezed):
    def forward(self, x):
        return self.c(x).mean(-1)


@pytest.mark.parametrize("method", ["saliency", "inputxgradient", "integratedgradients", "deepshap"])
@pytest.mark.parametrize("n,batch_size", [(1, None), (3, 1)])
def test_output_without_batch_axis_is_an_error_or_right(method, n, batch_size):
    """Never a silently wrong number: a clear error wherever a batch of one reaches the model
    (integrated gradients runs its scaled copies together, so its batches keep the axis)."""
    torch.manual_seed(0)
    m = Squeezed().eval()
    good = Unsqueezed().eval()
    good.load_state_dict(m.state_dict())
    seqs = ["ACGTACGTAC"] * n
    kw = dict(method=method, target=0, batch_size=batch_size)
    try:
        a = basewise.get_attributions(m, seqs, **kw)
    except ValueError as e:
        assert "batch axis" in str(e)
        assert method != "integratedgradients"
        return
    np.testing.assert_allclose(a, basewise.get_attributions(good, seqs, **kw), rtol=1e-5, atol=1e-7)


def test_ism_output_without_batch_axis_is_an_error():
    with pytest.raises(ValueError, match="batch axis"):
        basewise.ISM_predict("ACGTACGTAC", Squeezed().eval(), engine="full", batch_size=1, return_df=False)


def test_batched_output_still_works_with_target():
    m = Squeezed().eval()
    a = basewise.get_attributions(m, ["ACGTACGTAC"] * 3, method="saliency", target=1)
    assert a.shape == (3, 4, 10)


# ----------------------------------------------------------------------------- 5, 6. errors


def test_exception_types_match_grelus():
    import pyfaidx

    with pytest.raises(AssertionError):
        basewise.ISM_predict([], nn.Conv1d(4, 1, 1))
    with pytest.raises(ValueError):
        basewise.ISM_predict([], nn.Conv1d(4, 1, 1))
    multi = nn.Sequential(nn.Conv1d(4, 3, 3, padding=1), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    with pytest.raises(AssertionError, match="target"):
        basewise.get_attributions(multi, "ACGTACGT", method="saliency")
    assert issubclass(basewise.TargetError, ValueError)


def test_unknown_chromosome_is_a_fetch_error(tmp_path):
    import pandas as pd
    import pyfaidx

    fa = tmp_path / "g.fa"
    fa.write_text(">chr1\n" + "ACGT" * 20 + "\n")
    for row in ({"chrom": ["chr9"], "start": [0], "end": [8]}, {"chrom": ["chr1"], "start": [70], "end": [90]}):
        with pytest.raises(pyfaidx.FetchError) as e:
            basewise.ISM_predict(pd.DataFrame(row), nn.Conv1d(4, 1, 1), genome=str(fa))
        assert isinstance(e.value, basewise.SequenceInputError) and "seqs" in str(e.value)


@pytest.mark.parametrize("seqs", ["", [""], np.zeros((2, 0), dtype=np.int8), torch.zeros(2, 4, 0)])
def test_empty_sequences_are_refused_naming_seqs(seqs):
    calls = []
    m = nn.Conv1d(4, 1, 1)
    m.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="^seqs"):
        basewise.ISM_predict(seqs, m)
    with pytest.raises(ValueError, match="^seqs"):
        basewise.get_attributions(m, seqs, method="saliency")
    assert not calls


# ----------------------------------------------------------------------------- 7. smaller ones


def test_lambda_transform_on_lightning_model():
    from _grelu_standins import StandInLightningModel

    net = nn.Sequential(nn.Conv1d(4, 3, 3, padding=1), nn.AdaptiveAvgPool1d(1))
    lm = StandInLightningModel(net)
    out = basewise.ISM_predict("ACGTACGT", lm, prediction_transform=lambda y: y[:, 1:2], return_df=False)
    ref = basewise.ISM_predict("ACGTACGT", net, prediction_transform=lambda y: y[:, 1:2], return_df=False)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert lm.transform is None or not callable(getattr(lm.transform, "__wrapped__", None))


def test_plan_ism_never_raises_for_an_unavailable_device():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    plan = plan_ism(nn.Sequential(nn.Conv1d(4, 1, 3)), 50, device="cuda")
    assert not plan.supported and plan.reason


@pytest.mark.parametrize("kind,expected", [
    ("divide", ["divide by zero encountered in divide", "invalid value encountered in divide"]),
    ("log2FC", ["divide by zero encountered in divide", "invalid value encountered in divide",
                "divide by zero encountered in log2", "invalid value encountered in log2"]),
])
def test_compare_warnings_are_numpys(kind, expected):
    """A zero reference, zero and sign-changing mutants: the same RuntimeWarnings as numpy."""
    w = torch.zeros(1, 4, 1)
    w[0, :, 0] = torch.tensor([0.0, 1.0, -1.0, 0.0])
    conv = nn.Conv1d(4, 1, 1, bias=False)
    conv.weight.data.copy_(w)
    m = nn.Sequential(conv, nn.AdaptiveAvgPool1d(1))
    # sequence 0 "AA": ref 0 (x/0, 0/0); sequence 1 "CC": ref 1 -> A gives 0, G gives -1
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        basewise.ISM_predict(["AA", "CC"], m, compare_func=kind, return_df=False)
    got = [str(r.message) for r in rec if r.category is RuntimeWarning]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        raw = basewise.ISM_predict(["AA", "CC"], m, return_df=False)
        ratio = raw / raw[:, :1, :1][:, :, :, :, :]  # numpy: mut / ref (ref = A entries of pos 0)
        if kind == "log2FC":
            np.log2(ratio)
    assert got == expected == [str(r.message) for r in rec if r.category is RuntimeWarning]


# ----------------------------------------------------------------------------- 8. TorchScript, export


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 7, padding=3)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 5, padding=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.c2(F.relu(self.bn(self.c1(x))))
        return self.fc(F.relu(y).mean(-1))


def test_torchscript_model_from_python(tmp_path):
    torch.manual_seed(0)
    m = BNNet().eval()
    m.bn.running_var.uniform_(0.5, 2)
    seq = _rand_seq(200, 0)
    x = torch.zeros(2, 4, 200)
    torch.jit.save(torch.jit.trace(m, x), str(tmp_path / "m.pt"))
    js = torch.jit.load(str(tmp_path / "m.pt"))
    full = basewise.ISM_predict(seq, m, engine="full", return_df=False)
    out = basewise.ISM_predict(seq, js, return_df=False)
    assert_same_ism(out, full, "torchscript")
    assert "TorchScript" in basewise.ism_plan_report(js, 200)
    assert not js.training or True
    buf = dict(js.named_buffers())
    assert all(b.device.type == "cpu" for b in buf.values())


def test_exported_program_from_python(tmp_path):
    torch.manual_seed(0)
    m = BNNet().eval()
    seq = _rand_seq(200, 1)
    x = torch.zeros(2, 4, 200)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    em = torch.export.load(str(tmp_path / "m.pt2")).module()
    full = basewise.ISM_predict(seq, m, engine="full", return_df=False)
    assert "supported" in basewise.ism_plan_report(em, 200).splitlines()[0]
    assert plan_ism(em, 200).supported
    for engine in ("incremental", "auto"):
        out = basewise.ISM_predict(seq, em, engine=engine, return_df=False)
        assert_same_ism(out, full, f"exported, {engine}")
    a = basewise.get_attributions(em, seq, method="saliency", target=0)
    b = basewise.get_attributions(m, seq, method="saliency", target=0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_safety_net_runs_once_per_plan_and_range(monkeypatch):
    import basewise.ism as ism_mod

    calls = []
    orig = ism_mod._spot_check
    monkeypatch.setattr(ism_mod, "_spot_check", lambda *a, **k: calls.append(a[4:6]) or orig(*a, **k))
    monkeypatch.setattr(IsmPlan, "prefers_incremental", lambda self, *a, **k: True)
    torch.manual_seed(3)
    m = CenterCrop().eval()
    plan_ism(m, 301)
    for seed in (0, 1):
        basewise.ISM_predict(_rand_seq(301, seed), m, return_df=False)
    basewise.ISM_predict(_rand_seq(301, 2), m, start_pos=50, end_pos=80, return_df=False)
    assert calls == [(0, 301), (50, 80)]
