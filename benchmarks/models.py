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

Batch-norm running statistics are randomised so that batch norm is not the identity.

Example:
    >>> import torch
    >>> m = basset_like(3)
    >>> m(torch.zeros(2, 4, 1000)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["basset_like", "bpnet_like", "bpnet_counts_transform", "conv_transformer"]


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
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
