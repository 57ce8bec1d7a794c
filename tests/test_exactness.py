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
from basewise.incremental import plan_ism

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
            m.fc.weight.data = m.fc.weight.data * -2
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
