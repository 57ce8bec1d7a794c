"""The incremental engine's cost model (issue 12, deliverable 2).

``engine="auto"`` decides on a timed probe (one batch each way, cached with the plan) and, where
none was measured, on a static model that counts bytes moved as well as FLOPs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import basewise
from basewise import ism as ism_module
from basewise.incremental import IsmProbe, ism_plan_report, measure_plan, plan_ism


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 16, 9, padding=4), nn.ReLU(), nn.Conv1d(16, 16, 9, padding=4), nn.ReLU(),
                         nn.Conv1d(16, 2, 1)).eval()


class AttentionAtFullLength(nn.Module):
    """A short conv, then self-attention over all positions: a global op moving L x L bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).transpose(1, 2)  # (B, L, 8)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.mean(1))


def test_probe_is_measured_once_and_cached():
    plan = plan_ism(_cnn(), 300, use_cache=False)
    pr = measure_plan(plan, batch_size=16)
    assert isinstance(pr, IsmProbe)
    assert pr.full_s > 0 and pr.incremental_s > 0 and pr.ratio == pytest.approx(pr.full_s / pr.incremental_s)
    assert pr.batch_size == 16 and 4 <= pr.full_batch <= 16
    assert pr.full_setup_s > 0 and pr.incremental_setup_s > 0
    assert pr.speedup() == pr.ratio
    assert pr.speedup(10 ** 9) == pytest.approx(pr.ratio, rel=1e-3)  # set-up amortised
    assert pr.speedup(1) == pytest.approx((pr.full_s + pr.full_setup_s) / (pr.incremental_s + pr.incremental_setup_s))
    assert measure_plan(plan, batch_size=16) is pr  # cached with the plan
    assert plan.probe(16) is pr and plan.predicted_ratio == pr.ratio
    assert measure_plan(plan, batch_size=16, refresh=True) is not pr


def test_auto_follows_the_probe(monkeypatch):
    """The engine 'auto' picks is the one the probe measured faster, whatever the static model says."""
    m = _cnn()
    plan = plan_ism(m, 300)
    key = (64, torch.get_num_threads(), "cpu", torch.float32)
    fwd = lambda x: m(x)  # noqa: E731
    for ratio, engine in ((0.5, "full"), (3.0, "incremental")):
        plan._probes.clear()
        plan._probes[key] = IsmProbe(1e-3 * ratio, 1e-3, ratio, 64, 64)
        _, name = ism_module._make_predictor("auto", m, fwd, 300, torch.device("cpu"), torch.float32, None,
                                             batch_size=64)
        assert name == engine
        assert plan.worthwhile == (engine == "incremental")
    plan._probes.clear()


class ConvThenSoftmax(nn.Module):
    """Two convolutions (FLOP-heavy, local), then a softmax over the length (global, few FLOPs
    but all the bytes at full length on both paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 32, 9, padding=4)
        self.c2 = nn.Conv1d(32, 32, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(torch.relu(self.c1(x)))  # (B, 32, L)
        w = torch.softmax(h, dim=-1)
        return (w * h).sum(-1)  # (B, 32)


def test_static_model_counts_bytes():
    """The softmax over the length moves full-length bytes per mutant on both paths: the static
    speed-up must be well below the FLOP ratio, which sees only the convolutions' saving."""
    torch.manual_seed(1)
    plan = plan_ism(ConvThenSoftmax().eval(), 400, use_cache=False)
    assert plan.supported
    assert plan.bytes_full > 0 and plan.bytes_incremental > 0
    assert all(l.bytes_full >= 0 and l.bytes_incremental >= 0 for l in plan.layers)
    assert plan.predicted_flop_ratio > 10
    assert plan.static_ratio < plan.predicted_flop_ratio / 2
    # a plain CNN: bytes shrink with the windows as FLOPs do
    cnn = plan_ism(_cnn(), 2000, use_cache=False)
    assert cnn.static_ratio > 10 and cnn.bytes_full / cnn.bytes_incremental > 10


def test_report_shows_probe_and_static_prediction():
    rep = ism_plan_report(_cnn(), 500, batch_size=8)
    assert "timed probe" in rep and "static cost model" in rep and "bytes per mutant" in rep
    rep = ism_plan_report(_cnn(), 501, measure=False)
    assert "timed probe" not in rep


@pytest.mark.parametrize("n_seqs", [1, 3])
def test_auto_is_exact_whichever_engine_it_picks(n_seqs):
    torch.manual_seed(2)
    m = AttentionAtFullLength().eval()
    seqs = ["".join(np.random.RandomState(s).choice(list("ACGTN"), 120)) for s in range(n_seqs)]
    full = basewise.ISM_predict(seqs, m, engine="full", return_df=False)
    plan_ism(m, 120)  # cached: 'auto' measures its probe on the first call and follows it
    auto = basewise.ISM_predict(seqs, m, return_df=False)
    scale = float(np.abs(full).max())
    assert float(np.abs(auto - full).max()) <= 1e-5 * scale
