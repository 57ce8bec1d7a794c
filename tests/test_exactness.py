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
