"""The three benchmark models of ``bench_ism.py`` (random weights, evaluation mode).

* :func:`basset_like`: 3 x (conv + batch norm + ReLU + max pool) with 300/200/200 channels, kernels
  19/11/7 and pools 3/4/4, then two dense layers of 1000 and ``n_tasks`` outputs (Kelley et al.
  2016's architecture), for ``length`` = 1000 by default.
* :func:`bpnet_like`: a BPNet-style dilated residual CNN (64 channels, kernel-21 stem, 9 residual
  dilated convolutions with dilations 2..512, a profile head with a kernel-75 convolution cropped to
  the central 1000 bins and a counts head: mean over the central region, then dense), input 2114.
  It returns ``(profile, counts)``; :func:`bpnet_counts_transform` sums the counts head, so the
  model with that transform predicts (B, 1).
* :func:`conv_transformer`: two conv + ReLU + max-pool blocks, then two pre-norm transformer
  encoder layers over the pooled positions, mean over positions, dense.
* :func:`enformer_like`: gReLU's ``EnformerModel(n_tasks=8, channels=384, n_conv=5,
  n_transformers=4, n_heads=4, crop_len=0)`` written out in plain torch: a stem and 4 conv blocks
  (batch norm, Enformer GELU, convolution, residual 1x1 block), each followed by attention pooling
  (reshape (B, C, L) -> (B, C, L/2, 2), 1x1 conv2d logits, softmax over the pool window, weighted
  sum), 4 transformer layers with Enformer's relative-position attention, a pointwise block and a
  softplus head: (B, 4, L) -> (B, 8, L/32).
* :func:`borzoi_like`: a 5-block Borzoi-style model: a stem and 4 conv blocks with max pooling,
  2 transformer layers, U-net upsampling (nearest x2 plus a projected skip connection from the
  conv tower, then a separable convolution) twice, a softplus head: (B, 4, L) -> (B, 8, L/8).

Batch-norm running statistics are randomised so that batch norm is not the identity.

Example:
    >>> import torch
    >>> m = basset_like(3)
    >>> m(torch.zeros(2, 4, 1000)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["basset_like", "bpnet_like", "bpnet_counts_transform", "conv_transformer", "enformer_like",
           "borzoi_like"]


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


class BassetLike(nn.Module):
    """Basset-like CNN: (B, 4, L) -> (B, n_tasks)."""

    def __init__(self, n_tasks: int = 164, length: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 300, 19, padding=9)
        self.bn1 = nn.BatchNorm1d(300)
        self.pool1 = nn.MaxPool1d(3)
        self.conv2 = nn.Conv1d(300, 200, 11, padding=5)
        self.bn2 = nn.BatchNorm1d(200)
        self.pool2 = nn.MaxPool1d(4)
        self.conv3 = nn.Conv1d(200, 200, 7, padding=3)
        self.bn3 = nn.BatchNorm1d(200)
        self.pool3 = nn.MaxPool1d(4)
        n = ((length // 3) // 4) // 4
        self.fc1 = nn.Linear(200 * n, 1000)
        self.fc2 = nn.Linear(1000, 1000)
        self.fc3 = nn.Linear(1000, n_tasks)
        self.drop = nn.Dropout(0.3)
        # one ReLU module per use, so that DeepLIFT's module hooks see every non-linearity
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relus
        x = self.pool1(r[0](self.bn1(self.conv1(x))))
        x = self.pool2(r[1](self.bn2(self.conv2(x))))
        x = self.pool3(r[2](self.bn3(self.conv3(x))))
        x = x.flatten(1)
        x = self.drop(r[3](self.fc1(x)))
        x = self.drop(r[4](self.fc2(x)))
        return self.fc3(x)


def basset_like(n_tasks: int = 164, length: int = 1000, seed: int = 0) -> nn.Module:
    """Basset-like CNN with random weights in eval mode; (B, 4, length) -> (B, n_tasks).

    Args:
        n_tasks: number of outputs. Default 164.
        length: input length. Default 1000.
        seed: random seed of the weights. Default 0.

    Example:
        >>> basset_like(2, length=200)(torch.zeros(1, 4, 200)).shape
        torch.Size([1, 2])
    """
    torch.manual_seed(seed)
    m = BassetLike(n_tasks, length)
    _randomise_bn(m, seed)
    return m.eval()


class BPNetLike(nn.Module):
    """BPNet-style dilated residual CNN: (B, 4, L) -> ((B, n_outputs, out_len), (B, 1))."""

    def __init__(self, n_filters: int = 64, n_layers: int = 9, n_outputs: int = 2,
                 out_len: int = 1000) -> None:
        super().__init__()
        self.out_len = out_len
        self.iconv = nn.Conv1d(4, n_filters, 21, padding=10)
        self.rconvs = nn.ModuleList(
            nn.Conv1d(n_filters, n_filters, 3, padding=2 ** i, dilation=2 ** i) for i in range(1, n_layers + 1)
        )
        self.fconv = nn.Conv1d(n_filters, n_outputs, 75, padding=37)
        self.linear = nn.Linear(n_filters, 1)
        # one ReLU module per use, so that DeepLIFT's module hooks see every non-linearity
        self.irelu = nn.ReLU()
        self.rrelus = nn.ModuleList(nn.ReLU() for _ in range(n_layers))

    def forward(self, x: torch.Tensor):
        start = (x.shape[-1] - self.out_len) // 2
        end = start + self.out_len
        x = self.irelu(self.iconv(x))
        for conv, relu in zip(self.rconvs, self.rrelus):
            x = x + relu(conv(x))
        profile = self.fconv(x)[:, :, start:end]
        counts = self.linear(x[:, :, start - 37:end + 37].mean(dim=2)).reshape(x.shape[0], 1)
        return profile, counts


def bpnet_like(n_filters: int = 64, n_layers: int = 9, n_outputs: int = 2, out_len: int = 1000,
               seed: int = 0) -> nn.Module:
    """BPNet-like model with random weights in eval mode (input length 2114 by convention).

    Args:
        n_filters: channels. Default 64.
        n_layers: residual dilated layers (dilations 2, 4, ..., 2**n_layers). Default 9.
        n_outputs: profile tracks. Default 2.
        out_len: profile length (central crop). Default 1000.
        seed: random seed of the weights. Default 0.

    Example:
        >>> p, c = bpnet_like(8, 3, out_len=50)(torch.zeros(1, 4, 200))
        >>> p.shape, c.shape
        (torch.Size([1, 2, 50]), torch.Size([1, 1]))
    """
    torch.manual_seed(seed)
    m = BPNetLike(n_filters, n_layers, n_outputs, out_len)
    with torch.no_grad():  # keep activations O(1) through the residual tower
        for c in m.rconvs:
            c.weight.mul_(0.5)
    return m.eval()


def bpnet_counts_transform(outputs):
    """Prediction transform for :func:`bpnet_like`: sum of the counts head, (B, 1)."""
    _, counts = outputs
    return counts.sum(dim=-1, keepdim=True)


class ConvTransformer(nn.Module):
    """Conv trunk + transformer encoder: (B, 4, L) -> (B, n_tasks)."""

    def __init__(self, n_tasks: int = 1, channels: int = 64, n_layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, channels, 15, padding=7)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.pool = nn.MaxPool1d(4)
        layer = nn.TransformerEncoderLayer(channels, heads, 2 * channels, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(channels, n_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.transformer(x.transpose(1, 2))  # (B, L', C)
        return self.head(x.mean(dim=1))


def conv_transformer(n_tasks: int = 1, seed: int = 0) -> nn.Module:
    """Small conv + transformer model with random weights in eval mode.

    Example:
        >>> conv_transformer()(torch.zeros(1, 4, 256)).shape
        torch.Size([1, 1])
    """
    torch.manual_seed(seed)
    return ConvTransformer(n_tasks).eval()


# ----------------------------------------------------------------------------- Enformer / Borzoi


class EnformerGELU(nn.Module):
    """Enformer's GELU approximation, x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ConvBlock(nn.Module):
    """Batch norm, Enformer GELU, convolution ('same' padding): (B, C_in, L) -> (B, C_out, L)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(c_in)
        self.act = EnformerGELU()
        self.conv = nn.Conv1d(c_in, c_out, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class AttentionPool(nn.Module):
    """Enformer's attention pooling: (B, C, L) -> (B, C, L / pool)."""

    def __init__(self, channels: int, pool: int = 2) -> None:
        super().__init__()
        self.pool = pool
        self.to_logits = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.to_logits.weight)
            self.to_logits.weight.mul_(2)
            self.to_logits.weight.add_(0.01 * torch.randn_like(self.to_logits.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        x = x.reshape(b, c, n // self.pool, self.pool)  # (B, C, L/p, p)
        attn = self.to_logits(x).softmax(dim=-1)
        return (x * attn).sum(dim=-1)


def _relative_shift(x: torch.Tensor) -> torch.Tensor:
    """Enformer's relative shift: (B, H, N, 2N - 1) logits by distance -> (B, H, N, N) by key."""
    to_pad = torch.zeros_like(x[..., :1])
    x = torch.cat((to_pad, x), dim=-1)
    _, h, t1, t2 = x.shape
    x = x.reshape(-1, h, t2, t1)[:, :, 1:, :].reshape(-1, h, t1, t2 - 1)
    return x[..., :(t2 + 1) // 2]


class RelPosAttention(nn.Module):
    """Enformer's multi-head attention with relative positional logits: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int, dim_key: int = 64) -> None:
        super().__init__()
        self.heads, self.dim_key = heads, dim_key
        self.n_rel = dim // heads
        self.to_q = nn.Linear(dim, heads * dim_key, bias=False)
        self.to_k = nn.Linear(dim, heads * dim_key, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.to_rel_k = nn.Linear(self.n_rel, heads * dim_key, bias=False)
        self.rel_content_bias = nn.Parameter(0.1 * torch.randn(1, heads, 1, dim_key))
        self.rel_pos_bias = nn.Parameter(0.1 * torch.randn(1, heads, 1, dim_key))

    def _positions(self, n: int) -> torch.Tensor:
        """(2N - 1, n_rel) exponential-decay features of the signed distance."""
        d = torch.arange(-n + 1, n, dtype=torch.float32)  # (2N - 1,)
        half = self.n_rel // 2
        life = torch.exp(torch.linspace(math.log(3.0), math.log(n), half))  # (half,)
        f = torch.exp(-math.log(2.0) * d.abs()[:, None] / life[None, :])  # (2N - 1, half)
        return torch.cat([f, torch.sign(d)[:, None] * f], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, dk = self.heads, self.dim_key
        q = self.to_q(x).reshape(b, n, h, dk).transpose(1, 2) * dk ** -0.5  # (B, H, N, dk)
        k = self.to_k(x).reshape(b, n, h, dk).transpose(1, 2)  # (B, H, N, dk)
        v = self.to_v(x).reshape(b, n, h, -1).transpose(1, 2)  # (B, H, N, dv)
        content = torch.einsum("bhid,bhjd->bhij", q + self.rel_content_bias, k)  # (B, H, N, N)
        rel_k = self.to_rel_k(self._positions(n).to(x.dtype)).reshape(2 * n - 1, h, dk).transpose(0, 1)
        rel = _relative_shift(torch.einsum("bhid,hjd->bhij", q + self.rel_pos_bias, rel_k))  # (B, H, N, N)
        attn = (content + rel).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)  # (B, N, D)
        return self.to_out(out)


class TransformerLayer(nn.Module):
    """Pre-norm attention and feed-forward residual blocks on (B, N, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RelPosAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff2(F.relu(self.ff1(self.norm2(x))))


def _filters(start: int, end: int, n: int, divisible_by: int = 32) -> list:
    """n channel counts growing exponentially from start to end (Enformer's filter list)."""
    if n == 1:
        return [end]
    base = (end / start) ** (1.0 / (n - 1))
    return [max(divisible_by, int(round(start * base ** i / divisible_by) * divisible_by)) for i in range(n)]


class EnformerLike(nn.Module):
    """gReLU EnformerModel structure without gReLU: (B, 4, L) -> (B, n_tasks, L / 2**n_conv)."""

    def __init__(self, n_tasks: int = 8, channels: int = 384, n_conv: int = 5, n_transformers: int = 4,
                 n_heads: int = 4) -> None:
        super().__init__()
        half = channels // 2
        self.stem = nn.Conv1d(4, half, 15, padding=7)
        self.stem_res = ConvBlock(half, half, 1)
        self.stem_pool = AttentionPool(half)
        filters = [half] + _filters(half, channels, n_conv - 1)
        self.convs = nn.ModuleList(ConvBlock(a, b, 5) for a, b in zip(filters[:-1], filters[1:]))
        self.res = nn.ModuleList(ConvBlock(b, b, 1) for b in filters[1:])
        self.pools = nn.ModuleList(AttentionPool(b) for b in filters[1:])
        self.transformer = nn.ModuleList(TransformerLayer(channels, n_heads) for _ in range(n_transformers))
        self.pointwise = ConvBlock(channels, 2 * channels, 1)
        self.act = EnformerGELU()
        self.head = nn.Conv1d(2 * channels, n_tasks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stem_pool(x + self.stem_res(x))
        for conv, res, pool in zip(self.convs, self.res, self.pools):
            x = conv(x)
            x = pool(x + res(x))
        x = x.transpose(1, 2)  # (B, N, C)
        for layer in self.transformer:
            x = layer(x)
        x = self.act(self.pointwise(x.transpose(1, 2)))  # (B, 2C, N)
        return F.softplus(self.head(x))


def enformer_like(n_tasks: int = 8, channels: int = 384, n_conv: int = 5, n_transformers: int = 4,
                  n_heads: int = 4, seed: int = 0) -> nn.Module:
    """Enformer-structured model (gReLU's EnformerModel layout) with random weights in eval mode.

    Args:
        n_tasks: output tracks. Default 8.
        channels: channels after the conv tower (the stem has half). Default 384.
        n_conv: attention-pooled conv blocks, stem included (L is divided by 2**n_conv). Default 5.
        n_transformers: transformer layers. Default 4.
        n_heads: attention heads. Default 4.
        seed: random seed of the weights. Default 0.

    Example:
        >>> enformer_like(channels=32, n_conv=3, n_transformers=1)(torch.zeros(1, 4, 64)).shape
        torch.Size([1, 8, 8])
    """
    torch.manual_seed(seed)
    m = EnformerLike(n_tasks, channels, n_conv, n_transformers, n_heads)
    _randomise_bn(m, seed)
    return m.eval()


class BorzoiLike(nn.Module):
    """Borzoi-style conv tower, transformer and U-net: (B, 4, L) -> (B, n_tasks, L / 8)."""

    def __init__(self, n_tasks: int = 8, stem_channels: int = 96, channels: int = 192, n_conv: int = 5,
                 n_transformers: int = 2, n_heads: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv1d(4, stem_channels, 15, padding=7)
        filters = [stem_channels] + _filters(stem_channels + 32, channels, n_conv - 1)
        self.convs = nn.ModuleList(ConvBlock(a, b, 5) for a, b in zip(filters[:-1], filters[1:]))
        self.transformer = nn.ModuleList(TransformerLayer(channels, n_heads) for _ in range(n_transformers))
        # U-net: two upsampling stages, each adding a projected skip from the conv tower
        self.skip_proj = nn.ModuleList(ConvBlock(filters[-1 - j], channels, 1) for j in (0, 1))
        self.up_proj = nn.ModuleList(ConvBlock(channels, channels, 1) for _ in range(2))
        self.sep_dw = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=1, groups=channels) for _ in range(2))
        self.sep_pw = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(2))
        self.final = ConvBlock(channels, channels, 1)
        self.head = nn.Conv1d(channels, n_tasks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(self.stem(x), 2)
        skips = []
        for conv in self.convs:
            x = conv(x)
            skips.append(x)  # before the pool: (B, C_i, L_i)
            x = F.max_pool1d(x, 2)
        x = x.transpose(1, 2)  # (B, N, C)
        for layer in self.transformer:
            x = layer(x)
        x = x.transpose(1, 2)  # (B, C, N)
        for j in range(2):
            x = self.up_proj[j](x)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2N)
            x = x + self.skip_proj[j](skips[-1 - j])
            x = self.sep_pw[j](self.sep_dw[j](x))
        return F.softplus(self.head(self.final(x)))


def borzoi_like(n_tasks: int = 8, stem_channels: int = 96, channels: int = 192, n_conv: int = 5,
                n_transformers: int = 2, n_heads: int = 4, seed: int = 0) -> nn.Module:
    """Borzoi-structured model (conv tower with pooling, transformer, U-net) in eval mode.

    Args:
        n_tasks: output tracks. Default 8.
        stem_channels: channels of the stem. Default 96.
        channels: channels after the conv tower and in the U-net. Default 192.
        n_conv: max-pooled conv blocks, stem included (L is divided by 2**n_conv, then the U-net
            multiplies by 4). Default 5.
        n_transformers: transformer layers. Default 2.
        n_heads: attention heads. Default 4.
        seed: random seed of the weights. Default 0.

    Example:
        >>> borzoi_like(stem_channels=16, channels=32, n_transformers=1)(torch.zeros(1, 4, 128)).shape
        torch.Size([1, 8, 16])
    """
    torch.manual_seed(seed)
    m = BorzoiLike(n_tasks, stem_channels, channels, n_conv, n_transformers, n_heads)
    _randomise_bn(m, seed)
    return m.eval()
