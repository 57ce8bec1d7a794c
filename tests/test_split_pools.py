"""Length-splitting reshapes in the incremental engine (issue 12, deliverable 1).

A ``view``/``reshape`` that splits the length axis into (L/p, p) blocks, the ops on the blocks
(reductions over the window axis, softmax-weighted sums, pointwise ops, 1x1 conv2d and einsum
projections over channels) and the reverse merge are local: every model here must plan with no
global op before its head and give, at every position and base, the numbers of full recompute
to 1e-5 of the output scale (float32).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import basewise
from basewise.incremental import plan_ism

sys.path.insert(0, os.path.dirname(__file__))
from _fuzz_models import random_seqs  # noqa: E402

RTOL = 1e-5


def _assert_same(a: np.ndarray, full: np.ndarray, what: str) -> None:
    scale = max(float(np.abs(full).max()), 1e-30)
    err = float(np.abs(a - full).max())
    assert err <= RTOL * scale, f"{what}: max |incremental - full| = {err:.3g} on a scale of {scale:.3g}"


def _randomise_bn(m: nn.Module) -> None:
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, nn.BatchNorm1d):
                b.running_mean.normal_(0, 0.1)
                b.running_var.uniform_(0.5, 1.5)


class AttentionPool(nn.Module):
    """gReLU / enformer-pytorch attention pooling written out in plain torch.

    (B, C, L) -> (B, C, L/p, p); logits from a 1x1 conv2d; softmax over the pool window;
    weighted sum over it: (B, C, L/p).
    """

    def __init__(self, channels: int, pool: int = 2) -> None:
        super().__init__()
        self.pool = pool
        self.to_logits = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        x = x.reshape(b, c, n // self.pool, self.pool)  # (B, C, L/p, p)
        attn = self.to_logits(x).softmax(dim=-1)
        return (x * attn).sum(dim=-1)


class EnformerTower(nn.Module):
    """Stem conv, then [BN-GELU-conv residual block + attention pool] x 2, a profile head."""

    def __init__(self, c: int = 12, head: str = "profile") -> None:
        super().__init__()
        self.stem = nn.Conv1d(4, c, 7, padding=3)
        self.bn1, self.c1 = nn.BatchNorm1d(c), nn.Conv1d(c, c, 5, padding=2)
        self.pool1 = AttentionPool(c)
        self.bn2, self.c2 = nn.BatchNorm1d(c), nn.Conv1d(c, c + 3, 5, padding=2)
        self.pool2 = AttentionPool(c + 3)
        self.out = nn.Conv1d(c + 3, 3, 1)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.c1(F.gelu(self.bn1(x)))
        x = self.pool1(x)
        x = self.c2(F.gelu(self.bn2(x)))
        x = self.pool2(x)
        y = self.out(x)  # (B, 3, L/4)
        if self.head == "mean":
            return y.mean(-1)
        return y


class ViewPool(nn.Module):
    """Hand-written pools: ``x.view(B, C, L // 4, 4)`` then a reduction over the window axis."""

    def __init__(self, how: str, c: int = 7) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv1d(4, c, 5, padding=2)
        self.c2 = nn.Conv1d(c, 2, 3, padding=1)
        self.proj = nn.Parameter(torch.randn(c, c) / c ** 0.5)  # (C_out, C_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        b, c, n = h.shape
        v = h.view(b, c, n // 4, 4)  # (B, C, L/4, 4)
        if self.how == "amax":
            h = v.amax(-1)
        elif self.how == "mean":
            h = v.mean(-1)
        elif self.how == "sum":
            h = v.sum(dim=-1)
        elif self.how == "logsumexp":
            h = torch.logsumexp(v, dim=-1)
        elif self.how == "einsum":  # per-position projection of the (L/4, 4) blocks
            h = torch.einsum("bcnp,dc->bdnp", v, self.proj).mean(-1)
        elif self.how == "merge":  # split, pointwise on blocks, merge back, then stride-free pool
            h = (v * torch.sigmoid(v)).reshape(b, c, n)
        elif self.how == "shuffle":  # pixel-shuffle upsampling: (B, C, L) -> (B, C/2, 2L) ...
            h = h[:, :6].reshape(b, 3, 2, n).permute(0, 1, 3, 2).reshape(b, 3, 2 * n)
            h = F.max_pool1d(h, 2)  # ... -> (B, 3, L)
            return torch.einsum("bcl->bcl", h)
        return self.c2(h)


def _check(model: nn.Module, length: int, n_seqs: int, seed: int, what: str) -> None:
    model.eval()
    plan = plan_ism(model, length, use_cache=False)
    assert plan.supported, plan.reason
    bad = [l for l in plan.layers if l.kind == "global" and "reshape mixes" in l.note]
    assert not bad, f"{what}: a length-splitting reshape stayed global: {bad[0].note}"
    seqs = random_seqs(length, n_seqs, seed)
    full = basewise.ISM_predict(seqs, model, engine="full", return_df=False)
    inc = basewise.ISM_predict(seqs, model, engine="incremental", return_df=False)
    _assert_same(inc, full, what)


@pytest.mark.parametrize("seed,length,n_seqs", [(0, 64, 1), (1, 92, 3), (2, 36, 2)])
@pytest.mark.parametrize("head", ["profile", "mean"])
def test_attention_pooling_is_local_and_exact(seed, length, n_seqs, head):
    torch.manual_seed(seed)
    m = EnformerTower(head=head)
    _randomise_bn(m)
    plan = plan_ism(m.eval(), length, use_cache=False)
    kinds = {l.name: l.kind for l in plan.layers}
    assert all(k in ("local", "delta", "linear-global") for k in kinds.values()), kinds
    _check(m, length, n_seqs, seed, f"EnformerTower {head} L={length}")


@pytest.mark.parametrize("how", ["amax", "mean", "sum", "logsumexp", "einsum", "merge", "shuffle"])
@pytest.mark.parametrize("seed,length,n_seqs", [(3, 40, 1), (4, 76, 2)])
def test_view_pools_are_local_and_exact(how, seed, length, n_seqs):
    torch.manual_seed(seed)
    m = ViewPool(how)
    plan = plan_ism(m.eval(), length, use_cache=False)
    assert plan.predicted_flop_ratio > 1.5, str(plan)
    _check(m, length, n_seqs, seed, f"ViewPool {how} L={length}")


@pytest.mark.parametrize("how", ["fold", "over-blocks"])
def test_reshapes_that_mix_the_length_stay_global(how):
    """Folding length into channels has no rule, and a reduction over the block axis of a split
    is a global op: both must stay global, and the engine exact."""

    class Mix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(4, 3, 3, padding=1)

        def forward(self, x):
            h = self.c1(x)
            b, c, n = h.shape
            if how == "fold":
                return h.reshape(b, c * 4, n // 4).sum(1)  # (B, 4C, L/4): channel c*4 + i at block i
            return h.view(b, c, 4, n // 4).amax(2)  # 4 blocks of L/4: max over the blocks

    torch.manual_seed(5)
    m = Mix().eval()
    plan = plan_ism(m, 40, use_cache=False)
    glob = [l.op for l in plan.layers if l.kind == "global"]
    assert any(("reshape" if how == "fold" else "amax") in op for op in glob), str(plan)
    seqs = random_seqs(40, 2, 5)
    full = basewise.ISM_predict(seqs, m, engine="full", return_df=False)
    if plan.supported:
        inc = basewise.ISM_predict(seqs, m, engine="incremental", return_df=False)
        _assert_same(inc, full, how)


def test_enformer_pytorch_tiny_is_exact():
    enformer_pytorch = pytest.importorskip("enformer_pytorch")

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = enformer_pytorch.Enformer.from_hparams(
                dim=24, depth=1, heads=2, output_heads=dict(human=3), target_length=12,
                num_downsamples=3, dim_divisible_by=4, attn_dim_key=4)

        def forward(self, x):  # (B, 4, L) one-hot -> (B, 3, 12)
            return self.e(x.transpose(1, 2), head="human").transpose(1, 2)

    torch.manual_seed(6)
    m = Wrap().eval()
    for b in m.modules():
        if isinstance(b, nn.BatchNorm1d):
            with torch.no_grad():
                b.running_mean.normal_(0, 0.1)
                b.running_var.uniform_(0.5, 1.5)
    length = 128
    plan = plan_ism(m, length, use_cache=False)
    assert plan.supported, plan.reason
    # the conv tower with its three attention pools is local up to the transformer
    pools = [l for l in plan.layers if "softmax" in l.op and l.kind == "local"]
    assert len(pools) >= 3, str(plan)
    _check(m, length, 2, 6, "enformer-pytorch tiny")
