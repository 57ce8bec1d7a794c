"""Seeded random architectures for the ISM exactness fuzz (``test_fuzz.py``, ``benchmarks/fuzz_ism.py``).

``random_model(seed)`` builds a small eval-mode network mapping (B, 4, L) one-hot to (B, T) or
(B, T, L_out) from a random stack of the layers genomics models are made of: convolutions (any
kernel, dilation, stride, padding and padding mode), max/avg pools (odd lengths, ceil mode,
padding), crops and strided slices, channel concatenation, residual additions, batch/layer/group
norms, activations, upsampling and transposed convolutions, dropout, constant pads, reshape-based
pools, multi-head attention, and heads made of global pooling, flatten + dense, a GRU or a 1x1
convolution profile. The same seed always gives the same model and length.

Example:
    >>> m, L = random_model(3)
    >>> import torch
    >>> m(torch.zeros(2, 4, L)).shape[0]
    2
"""

from __future__ import annotations

import random
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Crop(nn.Module):
    def __init__(self, a: int, b: int, step: int = 1):
        super().__init__()
        self.a, self.b, self.step = a, b, step

    def forward(self, x):
        return x[:, :, self.a:x.shape[-1] - self.b:self.step]

    def extra_repr(self):
        return f"a={self.a}, b={self.b}, step={self.step}"


class RevComp(nn.Module):
    """Average of the forward and reverse-complement strands' features (flip along length)."""

    def forward(self, x):
        return 0.5 * (x + x.flip(1, 2))


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class ChannelLayerNorm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ViewPool(nn.Module):
    """Pooling written as a reshape plus a reduction over the window axis (Enformer style)."""

    def __init__(self, p: int, how: str):
        super().__init__()
        self.p, self.how = p, how

    def forward(self, x):
        b, c, length = x.shape
        x = x[:, :, : (length // self.p) * self.p].reshape(b, c, length // self.p, self.p)
        return x.amax(-1) if self.how == "max" else x.mean(-1)


class Attention(nn.Module):
    def __init__(self, c: int, heads: int):
        super().__init__()
        self.att = nn.MultiheadAttention(c, heads, batch_first=True)

    def forward(self, x):
        t = x.transpose(1, 2)
        return self.att(t, t, t, need_weights=False)[0].transpose(1, 2)


class GRUHead(nn.Module):
    def __init__(self, c: int, t: int):
        super().__init__()
        self.gru = nn.GRU(c, 8, batch_first=True)
        self.fc = nn.Linear(8, t)

    def forward(self, x):
        out, _ = self.gru(x.transpose(1, 2))
        return self.fc(out[:, -1])


class MeanHead(nn.Module):
    def __init__(self, c: int, t: int, how: str):
        super().__init__()
        self.fc = nn.Linear(c, t)
        self.how = how

    def forward(self, x):
        x = x.mean(-1) if self.how == "mean" else (x.amax(-1) if self.how == "max" else x.sum(-1))
        return self.fc(x)


class FlattenHead(nn.Module):
    def __init__(self, c: int, length: int, t: int):
        super().__init__()
        self.fc = nn.Linear(c * length, t)

    def forward(self, x):
        return self.fc(x.flatten(1))


class ProfileHead(nn.Module):
    def __init__(self, c: int, t: int):
        super().__init__()
        self.conv = nn.Conv1d(c, t, 1)

    def forward(self, x):
        return self.conv(x)


def _conv_out(length: int, k: int, s: int, d: int, p: int) -> int:
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_out(length: int, k: int, s: int, p: int, ceil: bool) -> int:
    num = length + 2 * p - k
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= length + p:
        out -= 1
    return out


def _layer(r: random.Random, c: int, length: int, depth: int) -> Tuple[nn.Module, int, int]:
    """One random layer for a (B, c, length) input: (module, out channels, out length)."""
    kinds = ["conv", "conv", "conv", "pool", "crop", "act", "norm", "residual", "concat",
             "upsample", "tconv", "pad", "dropout", "viewpool", "attention", "revcomp"]
    for _ in range(50):
        kind = r.choice(kinds)
        if kind == "conv":
            k = r.choice([1, 2, 3, 4, 5, 7, 8])
            d = r.choice([1, 1, 2, 3])
            s = r.choice([1, 1, 1, 2, 3])
            mode = r.choice(["zeros"] * 4 + ["reflect", "replicate", "circular"])
            p = r.choice([0, (d * (k - 1)) // 2, r.randint(0, k)])
            if mode != "zeros":
                p = min(p, length - 1)
            co = r.choice([4, 6, 8, 12])
            lo = _conv_out(length, k, s, d, p)
            if lo < 4:
                continue
            g = 2 if (c % 2 == 0 and co % 2 == 0 and r.random() < 0.2) else 1
            return nn.Conv1d(c, co, k, stride=s, dilation=d, padding=p, padding_mode=mode,
                             groups=g), co, lo
        if kind == "pool":
            k = r.choice([2, 3, 4, 5])
            s = r.choice([1, 2, 3, k])
            p = r.randint(0, k // 2)
            ceil = r.random() < 0.4
            lo = _pool_out(length, k, s, p, ceil)
            if lo < 4:
                continue
            if r.random() < 0.6:
                return nn.MaxPool1d(k, s, p, ceil_mode=ceil), c, lo
            return nn.AvgPool1d(k, s, p, ceil_mode=ceil, count_include_pad=r.random() < 0.5), c, lo
        if kind == "crop":
            a, b, step = r.randint(0, 6), r.randint(0, 6), r.choice([1, 1, 1, 2, 3])
            lo = len(range(a, length - b, step))
            if lo < 4:
                continue
            return Crop(a, b, step), c, lo
        if kind == "act":
            return r.choice([nn.ReLU(), nn.GELU(), nn.ELU(), nn.Sigmoid(), nn.Tanh(), nn.Softplus()]), c, length
        if kind == "norm":
            which = r.choice(["bn", "ln", "gn"])
            if which == "bn":
                bn = nn.BatchNorm1d(c)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                return bn, c, length
            if which == "ln":
                return ChannelLayerNorm(c), c, length
            return nn.GroupNorm(2 if c % 2 == 0 else 1, c), c, length
        if kind == "residual" and depth < 2:
            k = r.choice([1, 3, 5])
            d = r.choice([1, 2, 4])
            body = nn.Sequential(nn.Conv1d(c, c, k, padding=d * (k - 1) // 2, dilation=d), nn.ReLU())
            return Residual(body), c, length
        if kind == "concat" and depth < 2:
            k = r.choice([1, 3, 5])
            a = nn.Conv1d(c, 4, k, padding=k // 2)
            b = r.choice([nn.Identity(), nn.Sequential(nn.Conv1d(c, 4, 3, padding=1), nn.ReLU())])
            return Concat(a, b), 4 + (c if isinstance(b, nn.Identity) else 4), length
        if kind == "upsample" and length <= 120:
            mode = r.choice(["nearest", "linear"])
            return nn.Upsample(scale_factor=2, mode=mode), c, 2 * length
        if kind == "tconv" and length <= 120:
            k, s = r.choice([(2, 2), (3, 2), (4, 2), (3, 1)])
            p = r.randint(0, (k - 1) // 2)
            lo = (length - 1) * s - 2 * p + k
            return nn.ConvTranspose1d(c, c, k, stride=s, padding=p), c, lo
        if kind == "pad":
            a, b = r.randint(0, 4), r.randint(0, 4)
            return nn.ConstantPad1d((a, b), r.choice([0.0, 0.5])), c, length + a + b
        if kind == "dropout":
            return nn.Dropout(0.3), c, length
        if kind == "viewpool":
            p = r.choice([2, 3])
            if length // p < 4:
                continue
            return ViewPool(p, r.choice(["max", "mean"])), c, length // p
        if kind == "revcomp":
            return RevComp(), c, length
        if kind == "attention" and c % 2 == 0 and length <= 150:
            return Attention(c, r.choice([1, 2])), c, length
    return nn.Identity(), c, length


def random_model(seed: int) -> Tuple[nn.Module, int]:
    """A random eval-mode model and its input length, reproducible from ``seed``."""
    r = random.Random(seed)
    length = r.randint(24, 90)
    torch.manual_seed(seed)
    layers: List[nn.Module] = []
    c, cur = 4, length
    n_layers = r.randint(2, 6)
    # the first layer is usually a convolution (as in real models) but not always
    if r.random() < 0.6:
        k = r.choice([3, 5, 7, 9])
        s = r.choice([1, 1, 1, 2, 3])
        p = r.choice([0, k // 2])
        co = r.choice([6, 8, 12])
        layers.append(nn.Conv1d(4, co, k, stride=s, padding=p))
        c, cur = co, _conv_out(cur, k, s, 1, p)
    for _ in range(n_layers):
        m, c, cur = _layer(r, c, cur, 0)
        layers.append(m)
        if r.random() < 0.4:
            layers.append(nn.ReLU())
    t = r.choice([1, 2, 3])
    head = r.choice(["mean", "max", "sum", "flatten", "profile", "gru"])
    if head in ("mean", "max", "sum"):
        layers.append(MeanHead(c, t, head))
    elif head == "flatten":
        layers.append(FlattenHead(c, cur, t))
    elif head == "gru":
        layers.append(GRUHead(c, t))
    else:
        layers.append(ProfileHead(c, t))
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # larger weights than the default init keep effects well above rounding
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(1.5)
    return model, length


def random_seqs(length: int, n: int, seed: int, n_frac: float = 0.05) -> str:
    """``n`` random DNA strings of ``length`` with a few N bases (a list)."""
    r = random.Random(seed + 1_000_003)
    return ["".join("N" if r.random() < n_frac else r.choice("ACGT") for _ in range(length))
            for _ in range(n)]
