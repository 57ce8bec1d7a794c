"""basewise: fast, exact in-silico mutagenesis, attributions and attention maps for DNA models.

A drop-in replacement for gReLU's ``grelu.interpret.score``: ``import basewise.score as score``
or call the functions from here.

Example:
    >>> import torch, basewise
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3), torch.nn.AdaptiveAvgPool1d(1))
    >>> basewise.ISM_predict(["ACGTAC", "GGTTAA"], model, return_df=False).shape
    (2, 6, 4, 1, 1)
"""

import torch  # noqa: F401  (import torch before the extension: one shared OpenMP runtime)

from .ism import ISM_predict
from .ops import build_info
from .sequence import to_indices, to_onehot

__version__ = "0.1.0"

__all__ = ["ISM_predict", "build_info", "to_indices", "to_onehot", "__version__"]
