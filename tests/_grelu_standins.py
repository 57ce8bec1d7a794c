"""Small stand-ins for gReLU's ``LightningModel`` and its test model ``f``, written from the spec
(``grelu-score-behaviour.md`` section 5), so tests can exercise the LightningModel code paths
without installing grelu (basewise never imports it).

* :class:`StandInLightningModel` has what basewise relies on: ``.model`` (the network, returning
  (B, T, L_out)), ``.activation`` (gReLU's: ``torch.exp`` for Poisson regression and
  ``torch.sigmoid`` for binary tasks, both *plain functions*; ``nn.Identity()`` for MSE regression;
  ``nn.Softmax(dim=1)`` for multiclass), ``.transform`` (an ``nn.Module``, identity by default),
  ``add_transform(t)`` (sets ``t`` unless it is None), ``reset_transform()`` (back to identity) and
  ``forward(x, logits=False)``: a 2-D tensor gets a leading axis, a tuple gives its first element,
  anything else raises ``Exception("Cannot perform forward pass on the given input format.")``;
  then network, then the activation unless ``logits``, then the transform (always).
* :func:`make_test_model_f` builds gReLU's test model ``f``: one task, a 1-channel kernel-1 stem
  with weights [4, -2, 0, 0] (A, C, G, T) and bias 0, no activation or norm, mean-pooled, MSE
  regression (identity activation). So f(seq) = mean over positions of w[base]; an N (all-zero
  column) counts 0. Output (B, 1, 1).
* :func:`conv_net` builds a small random conv network with a gReLU-like (B, T, L_out) output, for
  attribution and ISM tests of non-linear models.

Example:
    >>> import torch
    >>> f = make_test_model_f()
    >>> x = torch.zeros(1, 4, 2); x[0, 0] = 1          # "AA"
    >>> f(x).flatten().tolist()
    [4.0]
    >>> StandInLightningModel(conv_net(tasks=2), activation="exp")(torch.zeros(3, 4, 20)).shape
    torch.Size([3, 2, 1])
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

__all__ = ["StandInLightningModel", "TestModelF", "make_test_model_f", "conv_net", "ACTIVATIONS"]

#: gReLU's task/loss -> activation (plain functions for exp and sigmoid, as gReLU stores them).
ACTIVATIONS = {
    "identity": lambda: nn.Identity(),  # regression, mse
    "mse": lambda: nn.Identity(),
    "exp": lambda: torch.exp,  # regression, poisson / poisson_multinomial
    "poisson": lambda: torch.exp,
    "sigmoid": lambda: torch.sigmoid,  # binary
    "binary": lambda: torch.sigmoid,
    "softmax": lambda: nn.Softmax(dim=1),  # multiclass
    "multiclass": lambda: nn.Softmax(dim=1),
}


class StandInLightningModel(nn.Module):
    """Duck-typed gReLU ``LightningModel``: network -> activation -> transform.

    Args:
        model: the network, (B, 4, L) -> (B, T, L_out).
        activation: one of the keys of :data:`ACTIVATIONS` ("identity"/"mse", "exp"/"poisson",
            "sigmoid"/"binary", "softmax"/"multiclass"), or a callable used as is.
            Default "identity".

    Example:
        >>> lm = StandInLightningModel(conv_net(), activation="sigmoid")
        >>> lm.add_transform(None); type(lm.transform).__name__
        'Identity'
    """

    def __init__(self, model: nn.Module, activation: Union[str, Callable] = "identity") -> None:
        super().__init__()
        self.model = model
        self.activation = ACTIVATIONS[activation]() if isinstance(activation, str) else activation
        self.reset_transform()

    def add_transform(self, prediction_transform: Optional[Callable]) -> None:
        """Attach a prediction transform (None keeps the current one), as gReLU does."""
        if prediction_transform is not None:
            self.transform = prediction_transform

    def reset_transform(self) -> None:
        """Back to the identity transform."""
        self.transform = nn.Identity()

    @staticmethod
    def format_input(x):
        if isinstance(x, torch.Tensor):
            return x if x.ndim == 3 else x.unsqueeze(0)
        if isinstance(x, tuple):
            return x[0]
        raise Exception("Cannot perform forward pass on the given input format.")

    def forward(self, x, logits: bool = False) -> torch.Tensor:
        x = self.format_input(x)  # (B, 4, L)
        x = self.model(x)  # (B, T, L_out)
        if not logits:
            x = self.activation(x)
        return self.transform(x)


class TestModelF(nn.Module):
    """gReLU's test network: kernel-1 stem (weights [4, -2, 0, 0], bias 0), mean over positions.

    (B, 4, L) -> (B, 1, 1).
    """

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Conv1d(4, 1, 1)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.tensor([4.0, -2.0, 0.0, 0.0]).view(1, 4, 1))
            self.embedding.bias.zero_()
        self.head = nn.AdaptiveAvgPool1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(x))  # (B, 1, 1)


def make_test_model_f() -> StandInLightningModel:
    """gReLU's test model f as a LightningModel stand-in (identity activation).

    Example:
        >>> make_test_model_f()(torch.eye(4)[None]).item()   # mean of 4, -2, 0, 0
        0.5
    """
    return StandInLightningModel(TestModelF(), activation="identity")


class _ConvNet(nn.Module):
    def __init__(self, tasks: int, channels: int, out_bins: int, activation: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, channels, 5, padding=2)
        self.act1 = activation
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.act2 = copy.deepcopy(activation)
        self.pool = nn.AdaptiveAvgPool1d(out_bins)
        self.head = nn.Conv1d(channels, tasks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.head(self.pool(x))  # (B, T, out_bins)


def conv_net(tasks: int = 1, channels: int = 8, out_bins: int = 1, seed: int = 0,
             activation: Optional[nn.Module] = None, scale: float = 1.0) -> nn.Module:
    """A small random conv network with a gReLU-style (B, tasks, out_bins) output, eval mode.

    Two convolutions (kernels 5 and 3, ``channels`` channels) with ``activation`` (a module,
    default ``nn.ReLU()``; a copy of it follows the second convolution), adaptive average
    pooling to ``out_bins`` bins, and a kernel-1 head. ``scale`` multiplies the head's weights.

    Example:
        >>> conv_net(tasks=3, out_bins=2)(torch.zeros(1, 4, 10)).shape
        torch.Size([1, 3, 2])
    """
    gen = torch.Generator().manual_seed(seed)
    net = _ConvNet(tasks, channels, out_bins, activation if activation is not None else nn.ReLU())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel()) ** 0.5))
        net.head.weight.mul_(scale)
    return net.eval()
